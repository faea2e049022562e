"""What ``train.py`` and ``eval.py`` share: the life of a run, evaluation and metric files.

A training run (``train``):

1. the plan (``clipcore.resume``): a new run, a resume, or "already finished";
2. the method is built (data read, backbones loaded): a mistake here leaves no run folder;
3. the run folder is opened, the attempt recorded in ``status.json``, stop signals caught;
4. fit, with ``last.ckpt`` written at every epoch end (and every N steps / minutes, and on a
   stop signal); then test metrics and the export;
5. the attempt ends as finished, preempted (exit 128 + signal) or failed (exit 2 for a user
   error), with one line in ``train.log``. A first attempt that fails before its first
   optimisation step removes its run folder: it holds nothing but its config and the error.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import warnings
from pathlib import Path
from typing import Optional

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from omegaconf import DictConfig

from clipcore.checkpoint_file import load_checkpoint
from clipcore.checkpointing import AtomicCheckpointIO, RNGStateCallback, RunCheckpoint, remove_stale_temporary_files
from clipcore.config import from_plain, load_config, save_config, to_plain
from clipcore.errors import UserError, user_message
from clipcore.evaluation import PREDICTIONS_FILE, PredictionRecorder, write_predictions
from clipcore.export import read_export, write_export
from clipcore.input_files import record_input_files
from clipcore.io import atomic_write_text
from clipcore.logging import build_loggers, finish_wandb
from clipcore.module import ClipMethodModule, check_fingerprints
from clipcore.registry import build_method, method_builder
from clipcore.resume import RunPlan, plan_run
from clipcore.rundir import ATTEMPT_ENV, CHECKPOINT_DIR, RESUME_CKPT_ENV, RUN_DIR_ENV, launch_rank, new_run_dir
from clipcore.signals import RunPreempted, StopRequest, requeue_slurm_job, signal_name
from clipcore.status import FAILED, FINISHED, PREEMPTED, begin_attempt, end_attempt
from clipcore.wandb_mode import resolve_wandb_mode

log = logging.getLogger(__name__)

# Lightning warns on every mid-epoch resume unless the DataLoader itself is stateful; here the
# datamodule carries the position (clipcore.data.resume), so the resume is exact.
warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")
# Lightning's own pytree helper builds LeafSpec(), which torch >= 2.10 deprecates: a warning per
# fit and per test that no setting of ours can act on.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


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
        plugins=_plugins(),
    )


def _plugins() -> list:
    plugins: list = [AtomicCheckpointIO()]
    from lightning.fabric.plugins.environments import SLURMEnvironment

    if SLURMEnvironment.detect():
        # Our own SIGUSR1 handling checkpoints at a step boundary and then requeues
        # (clipcore.signals); Lightning's would save from inside the signal handler, mid-step.
        plugins.append(SLURMEnvironment(auto_requeue=False))
    return plugins


def build_trainer(cfg: DictConfig, run_dir: Path, loggers: list, stop: StopRequest,
                  inference_mode: bool = True) -> L.Trainer:
    ck = cfg.checkpoint
    callbacks = [RunCheckpoint(run_dir, stop, ck.every_n_steps, ck.every_n_minutes), RNGStateCallback()]
    if ck.monitor:  # best-k, independent of last.ckpt
        callbacks.append(ModelCheckpoint(dirpath=str(run_dir / CHECKPOINT_DIR), filename="best-{epoch:03d}",
                                         monitor=ck.monitor, mode=ck.mode, save_top_k=ck.save_top_k,
                                         save_last=False, every_n_epochs=ck.every_n_epochs))
    if loggers:
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    if cfg.trainer.enable_progress_bar:
        # The bar reads the logged loss from the device when it redraws: as often as metrics
        # are logged, not at every step.
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, cfg.trainer.log_every_n_steps)))
    return L.Trainer(default_root_dir=str(run_dir), logger=loggers or False, callbacks=callbacks,
                     inference_mode=inference_mode, **trainer_kwargs(cfg))


def one_copy_of_lightning_messages() -> None:
    """``import lightning`` gives the "lightning" logger a console handler of its own, so where the
    root logger has one too (every entry point configures it) each Lightning message was printed
    twice ("INFO: Seed set to 1", then ours). Keep the root's: it also writes the run's train.log."""
    if not any(isinstance(h, logging.StreamHandler) for h in logging.getLogger().handlers):
        return
    lightning_logger = logging.getLogger("lightning")
    for handler in list(lightning_logger.handlers):
        if type(handler) is logging.StreamHandler:
            lightning_logger.removeHandler(handler)


def file_log_handler(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    return handler


def train(cfg: DictConfig, plan: Optional[RunPlan] = None) -> Path:
    """Fit ``cfg.method``, evaluate, export; returns the run directory.

    Raises :class:`RunPreempted` after a stop signal (the checkpoint is saved) and re-raises
    any failure after recording it in ``status.json`` and ``train.log``.
    """
    plain = to_plain(cfg)
    plan = plan or plan_run(cfg, plain)
    if plan.finished:
        log.info("%s has already finished (status.json); nothing to train", plan.run_dir)
        return plan.run_dir
    resolve_wandb_mode(cfg.logger.wandb.mode)  # W&B online without a key: say so before the models load
    one_copy_of_lightning_messages()
    L.seed_everything(cfg.seed, workers=True)
    module, datamodule = build_method(cfg)
    if cfg.trainer.compile:
        module.compile_blocks(cfg.trainer.compile_backend)
    run_dir = plan.run_dir or plan.new_dir or new_run_dir(cfg.output_dir, cfg.experiment)
    run_dir.mkdir(parents=True, exist_ok=True)
    rank_zero = launch_rank() == 0
    handler = file_log_handler(run_dir / "train.log")
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(min(root.level, logging.INFO) if root.level else logging.INFO)
    inherited = {k: os.environ.get(k) for k in (RUN_DIR_ENV, RESUME_CKPT_ENV, ATTEMPT_ENV)}
    stop = StopRequest().install()
    trainer_box: list[L.Trainer] = []
    try:
        if rank_zero:
            attempt = begin_attempt(run_dir, cfg, plan.checkpoint)
            save_config(cfg, run_dir / "config.yaml")
            record_input_files(run_dir, plain)
            for stale in remove_stale_temporary_files(run_dir):
                log.warning("removed %s, left by a process that died while writing a checkpoint", stale)
            for key, (old, new) in plan.changes.items():
                log.info("resumed with %s changed: %r -> %r (resume_allow)", key, old, new)
        else:
            attempt = int(os.environ.get(ATTEMPT_ENV, "0"))
        # DDP worker processes re-run the command line: they join this folder and checkpoint.
        os.environ.update({RUN_DIR_ENV: str(run_dir), ATTEMPT_ENV: str(attempt)})
        if plan.checkpoint:
            os.environ[RESUME_CKPT_ENV] = str(plan.checkpoint)
        log.info("run directory: %s (attempt %d%s)", run_dir, attempt,
                 f", resuming {plan.checkpoint}" if plan.checkpoint else "")
        _fit_test_export(cfg, module, datamodule, run_dir, plan.checkpoint, attempt, stop, trainer_box)
    except RunPreempted as exc:
        _record_preemption(run_dir, rank_zero, exc)
        raise
    except KeyboardInterrupt:  # a second Ctrl+C: stopped at once, without a checkpoint
        _record_preemption(run_dir, rank_zero, RunPreempted(signal.SIGINT, "interrupted (second Ctrl+C)"))
        raise
    except BaseException as exc:
        _record_failure(run_dir, rank_zero, exc, attempt_started=bool(trainer_box and trainer_box[0].global_step))
        raise
    else:
        if rank_zero:
            end_attempt(run_dir, FINISHED, exit_code=0)
    finally:
        stop.restore()
        for key, value in inherited.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        root.removeHandler(handler)
        handler.close()
    return run_dir


def _fit_test_export(cfg, module, datamodule, run_dir: Path, ckpt: Optional[Path], attempt: int,
                     stop: StopRequest, trainer_box: list) -> None:
    loggers = build_loggers(cfg, run_dir, to_plain(cfg), attempt)
    # A test-time method that takes gradient steps (TPT) needs autograd in the final test.
    trainer = build_trainer(cfg, run_dir, loggers, stop, not getattr(module, "needs_grad_at_test", False))
    trainer_box.append(trainer)
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt) if ckpt else None)
    if stop.requested:  # after the last checkpoint, before the (possibly long) evaluation
        raise RunPreempted(stop.signum, f"received {signal_name(stop.signum)} after training; "
                                        f"the final evaluation runs when the run is resumed")
    results = trainer.test(module, datamodule=datamodule, verbose=False)
    rows = gather_predictions(module, trainer)
    if trainer.is_global_zero:
        write_metrics(merge_results(results), run_dir / "eval", title=f"{cfg.method} on {cfg.data.name}")
        write_test_predictions(rows, datamodule, run_dir / "eval")
        if cfg.export and not cfg.trainer.fast_dev_run:
            export_module(module, unused_path(run_dir / "exports" / "final"))


def _record_preemption(run_dir: Path, rank_zero: bool, exc: RunPreempted) -> None:
    finish_wandb(exc.exit_code)
    if not rank_zero:
        return
    requeued = exc.signum == getattr(signal, "SIGUSR1", None) and requeue_slurm_job()
    end_attempt(run_dir, PREEMPTED, signal_name(exc.signum), exc.exit_code)
    log.warning("%s; exit status %d%s. Resume with the same command and resume=%s", exc,
                exc.exit_code, "; SLURM job requeued" if requeued else "", run_dir)


def _record_failure(run_dir: Path, rank_zero: bool, exc: BaseException, attempt_started: bool) -> None:
    user = isinstance(exc, UserError)
    exit_code = 2 if user else 1
    finish_wandb(exit_code)
    if not rank_zero:
        return
    message = user_message(exc) if user else f"{type(exc).__name__}: {exc}"
    if user:
        log.error("error: %s", message, extra={"file_only": True})
    else:
        log.exception("training failed")
    end_attempt(run_dir, FAILED, message, exit_code)
    if not attempt_started and _is_first_attempt_without_checkpoint(run_dir):
        shutil.rmtree(run_dir, ignore_errors=True)
        log.info("removed %s: its first attempt failed before training started", run_dir)


def _is_first_attempt_without_checkpoint(run_dir: Path) -> bool:
    from clipcore.status import read_status

    status = read_status(run_dir) or {}
    checkpoints = run_dir / CHECKPOINT_DIR
    return len(status.get("attempts", [])) <= 1 and not (checkpoints.is_dir() and any(checkpoints.iterdir()))


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
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in sorted(metrics.items()))
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True))
    atomic_write_text(out_dir / "metrics.md", f"# {title}\n\n| metric | value |\n|---|---|\n{rows}\n")


def export_module(module: ClipMethodModule, directory: Path) -> Path:
    tensors, metadata = module.export_state()
    metadata = {"method": module.method_name, "config": module.config,
                "backbone_fingerprints": module.fingerprints(), **metadata}
    path = write_export(directory, tensors, metadata)
    log.info("exported %s to %s", module.method_name, path)
    return path


def module_from_checkpoint(path: Path, files: list[str] = (), overrides: list[str] = ()):
    ckpt = load_checkpoint(path)
    cfg = load_config(files, overrides, base=from_plain(ckpt["hyper_parameters"]["config"]))
    module, datamodule = build_method(cfg)
    module.on_load_checkpoint(ckpt)
    try:
        module.load_state_dict(ckpt["state_dict"], strict=False)
    except RuntimeError as exc:
        raise UserError(f"{path}: trained tensors do not fit this configuration: {exc}") from exc
    return cfg, module, datamodule


def module_from_export(directory: Path, files: list[str] = (), overrides: list[str] = ()):
    tensors, metadata = read_export(directory)
    cfg = load_config(files, overrides, base=from_plain(metadata["config"]))
    module, datamodule = method_builder(metadata["method"])(cfg)
    check_fingerprints(metadata.get("backbone_fingerprints", {}), module.fingerprints())
    module.load_export(tensors, metadata)
    return cfg, module, datamodule


def evaluate(cfg: DictConfig, module: ClipMethodModule, datamodule, out_dir: Path) -> dict[str, float]:
    one_copy_of_lightning_messages()
    L.seed_everything(cfg.seed, workers=True)
    # A test-time method that takes gradient steps (TPT) needs autograd while testing.
    trainer = L.Trainer(default_root_dir=str(out_dir), logger=False, enable_checkpointing=False,
                        inference_mode=not getattr(module, "needs_grad_at_test", False), **trainer_kwargs(cfg))
    metrics = merge_results(trainer.test(module, datamodule=datamodule, verbose=False))
    rows = gather_predictions(module, trainer)
    if trainer.is_global_zero:
        write_metrics(metrics, out_dir, title=f"{cfg.method} on {cfg.data.name}")
        write_test_predictions(rows, datamodule, out_dir)
    return metrics


def gather_predictions(module, trainer):
    """The per-image test rows of a classification module, from every rank (a collective)."""
    recorder = getattr(module, "predictions", None)
    if not isinstance(recorder, PredictionRecorder):
        return None
    return recorder.gathered(trainer.world_size)


def write_test_predictions(rows, datamodule, out_dir: Path) -> None:
    """``predictions.csv`` beside metrics.json (classification: one row per test image)."""
    if rows is not None:
        write_predictions(out_dir / PREDICTIONS_FILE, rows, datamodule.splits.test, datamodule.classnames)
