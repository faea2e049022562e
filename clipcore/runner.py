"""What ``train.py`` and ``eval.py`` share: trainer construction, evaluation and metric files.

The entry points import the method packages (which register themselves) and call these.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from omegaconf import DictConfig

from clipcore.checkpoint import AtomicCheckpointIO, RNGStateCallback
from clipcore.config import from_plain, load_config, save_config, to_plain
from clipcore.export import read_export, write_export
from clipcore.logging import build_loggers
from clipcore.module import ClipMethodModule, check_fingerprints
from clipcore.registry import get_method
from clipcore.rundir import RUN_DIR_ENV, latest_checkpoint, new_run_dir, run_dir_of_checkpoint

log = logging.getLogger(__name__)


def trainer_kwargs(cfg: DictConfig) -> dict:
    t = cfg.trainer
    return dict(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
        precision=t.precision, max_epochs=t.max_epochs, max_steps=t.max_steps,
        limit_train_batches=t.limit_train_batches, limit_val_batches=t.limit_val_batches,
        limit_test_batches=t.limit_test_batches, check_val_every_n_epoch=t.check_val_every_n_epoch,
        log_every_n_steps=t.log_every_n_steps, deterministic=t.deterministic, fast_dev_run=t.fast_dev_run,
        num_sanity_val_steps=t.num_sanity_val_steps, gradient_clip_val=t.gradient_clip_val,
        accumulate_grad_batches=t.accumulate_grad_batches, enable_progress_bar=t.enable_progress_bar,
        # Our samplers shard across ranks themselves (deterministic per seed and epoch).
        use_distributed_sampler=False,
        plugins=[AtomicCheckpointIO()],
    )


def build_trainer(cfg: DictConfig, run_dir: Path, loggers: list) -> L.Trainer:
    ck = cfg.checkpoint
    checkpointing = ModelCheckpoint(
        dirpath=str(run_dir / "checkpoints"),
        filename="best-{epoch:03d}",
        monitor=ck.monitor,
        mode=ck.mode,
        save_top_k=ck.save_top_k if ck.monitor else 0,
        save_last=True,
        every_n_epochs=ck.every_n_epochs,
    )
    callbacks = [checkpointing, RNGStateCallback()]
    if loggers:
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    return L.Trainer(default_root_dir=str(run_dir), logger=loggers or False, callbacks=callbacks,
                     **trainer_kwargs(cfg))


def file_log_handler(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    return handler


def resolve_resume(cfg: DictConfig) -> tuple[Path | None, Path | None]:
    """``(checkpoint, run_dir)`` for ``cfg.resume``; the run dir is reused when the ckpt is inside one."""
    if not cfg.resume:
        return None, None
    ckpt = latest_checkpoint(cfg.output_dir, cfg.experiment) if cfg.resume == "last" else Path(cfg.resume)
    if not ckpt.is_file():
        raise FileNotFoundError(f"resume={cfg.resume}: checkpoint file {ckpt} not found")
    return ckpt, run_dir_of_checkpoint(ckpt)


def train(cfg: DictConfig) -> Path:
    """Fit ``cfg.method``, evaluate, export; returns the run directory."""
    ckpt, run_dir = resolve_resume(cfg)
    run_dir = run_dir or new_run_dir(cfg.output_dir, cfg.experiment)
    os.environ[RUN_DIR_ENV] = str(run_dir)  # DDP worker processes write into the same folder
    handler = file_log_handler(run_dir / "train.log")
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(min(root.level, logging.INFO) if root.level else logging.INFO)
    try:
        return _train_in(cfg, run_dir, ckpt)
    finally:
        os.environ.pop(RUN_DIR_ENV, None)
        root.removeHandler(handler)
        handler.close()


def _train_in(cfg: DictConfig, run_dir: Path, ckpt: Path | None) -> Path:
    if not (run_dir / "config.yaml").exists():
        save_config(cfg, run_dir / "config.yaml")
    L.seed_everything(cfg.seed, workers=True)

    module, datamodule = get_method(cfg.method).build(cfg)
    config_dict = to_plain(cfg)
    trainer = build_trainer(cfg, run_dir, build_loggers(cfg, run_dir, config_dict))
    log.info("run directory: %s", run_dir)
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt) if ckpt else None)
    if trainer.interrupted:
        return run_dir
    results = trainer.test(module, datamodule=datamodule, verbose=False)
    if trainer.is_global_zero:
        write_metrics(merge_results(results), run_dir / "eval", title=f"{cfg.method} on {cfg.data.name}")
        if cfg.export and not cfg.trainer.fast_dev_run:
            export_module(module, unused_path(run_dir / "exports" / "final"))
    return run_dir


def unused_path(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``... : a resumed run never overwrites an earlier export."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def merge_results(results: list[dict]) -> dict[str, float]:
    merged: dict[str, float] = {}
    for item in results:
        merged.update({k: float(v) for k, v in item.items()})
    return merged


def write_metrics(metrics: dict[str, float], out_dir: Path, title: str = "metrics") -> None:
    """``metrics.json`` and a readable ``metrics.md`` table (written atomically)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in sorted(metrics.items()))
    for name, text in (("metrics.json", json.dumps(metrics, indent=2, sort_keys=True)),
                       ("metrics.md", f"# {title}\n\n| metric | value |\n|---|---|\n{rows}\n")):
        tmp = out_dir / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out_dir / name)


def export_module(module: ClipMethodModule, directory: Path) -> Path:
    tensors, metadata = module.export_state()
    metadata = {"method": module.method_name, "config": module.config,
                "backbone_fingerprints": module.fingerprints(), **metadata}
    path = write_export(directory, tensors, metadata)
    log.info("exported %s to %s", module.method_name, path)
    return path


def load_checkpoint_file(path: Path) -> dict:
    """Our checkpoints hold tensors and plain containers only, so the safe loader suffices."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file named
        raise RuntimeError(f"could not read checkpoint {path}: {exc}") from exc


def module_from_checkpoint(path: Path, files: list[str] = (), overrides: list[str] = ()):
    ckpt = load_checkpoint_file(path)
    cfg = load_config(files, overrides, base=from_plain(ckpt["hyper_parameters"]["config"]))
    module, datamodule = get_method(cfg.method).build(cfg)
    module.on_load_checkpoint(ckpt)
    try:
        module.load_state_dict(ckpt["state_dict"], strict=False)
    except RuntimeError as exc:
        raise RuntimeError(f"{path}: trained tensors do not fit this configuration: {exc}") from exc
    return cfg, module, datamodule


def module_from_export(directory: Path, files: list[str] = (), overrides: list[str] = ()):
    tensors, metadata = read_export(directory)
    cfg = load_config(files, overrides, base=from_plain(metadata["config"]))
    module, datamodule = get_method(metadata["method"]).build(cfg)
    check_fingerprints(metadata.get("backbone_fingerprints", {}), module.fingerprints())
    module.load_export(tensors, metadata)
    return cfg, module, datamodule


def evaluate(cfg: DictConfig, module: ClipMethodModule, datamodule, out_dir: Path) -> dict[str, float]:
    L.seed_everything(cfg.seed, workers=True)
    trainer = L.Trainer(default_root_dir=str(out_dir), logger=False, **trainer_kwargs(cfg))
    metrics = merge_results(trainer.test(module, datamodule=datamodule, verbose=False))
    if trainer.is_global_zero:
        write_metrics(metrics, out_dir, title=f"{cfg.method} on {cfg.data.name}")
    return metrics
