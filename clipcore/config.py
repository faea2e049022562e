"""Typed run configuration: YAML files merged in order, then ``key=value`` overrides.

The schema is a tree of dataclasses. ``kdpl`` and ``gcd`` add their own sections with
:func:`register_config_section`, so this module never imports them (one-way imports).
Every merge is validated: an unknown key is an error listing the valid keys beside it, a value
of the wrong type is an error naming the key, and both name the file or override they came from.

A YAML file may start with ``include: [other.yaml, ...]``; included files (paths relative to the
including file, or to ``configs/``) are merged first, so experiments compose config groups.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from clipcore.errors import UserError
from clipcore.io import atomic_write_text

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(UserError, ValueError):
    """A configuration file or override is invalid; the message names the key and the source."""


@dataclass
class BackboneConfig:
    # Built-in open_clip name (e.g. ViT-B-32-quickgelu), local-dir:/path, or synthetic-student.
    name: str = "synthetic-student"
    # open_clip pretrained tag (openai, dfn5b, ...) or a local .pt/.bin/.safetensors file.
    pretrained: Optional[str] = None
    # JSON file with an open_clip model config: builds the architecture with random weights.
    config: Optional[str] = None
    cache_dir: Optional[str] = None


@dataclass
class DataConfig:
    name: str = "shapeworld"
    root: str = "data"
    # Few-shot images per class for training (None: use every training image).
    num_shots: Optional[int] = 16
    # all | base | new (base-to-novel protocol, kdpl spec 3.3).
    subsample_classes: str = "all"
    batch_size: int = 32
    eval_batch_size: int = 100
    num_workers: int = 4
    # None: the student backbone's input size.
    image_size: Optional[int] = None
    # clip | imagenet: normalisation statistics.
    normalization: str = "clip"
    # Smallest crop of the random-resized-crop augmentation (Dassl: 0.08).
    min_crop_scale: float = 0.08
    # Skip undecodable images (each is logged) instead of stopping; fail when more than
    # max_corrupt_fraction of a split is skipped.
    skip_corrupt: bool = False
    max_corrupt_fraction: float = 0.01
    # Generalized category discovery only.
    prop_train_labels: float = 0.5
    split_follows_seed: bool = False


@dataclass
class OptimConfig:
    """SGD with momentum and a per-epoch schedule: the optimiser of both references."""

    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 5e-4
    # Dassl-style constant warm-up epochs at warmup_lr, then per-epoch cosine.
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    # Cosine floor as a fraction of the base lr.
    eta_min_ratio: float = 0.0


@dataclass
class TrainerConfig:
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    max_epochs: int = 10
    max_steps: int = -1
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    check_val_every_n_epoch: Optional[int] = 1
    log_every_n_steps: int = 10
    deterministic: Any = False
    fast_dev_run: Any = False
    num_sanity_val_steps: int = 0
    gradient_clip_val: Optional[float] = None
    accumulate_grad_batches: int = 1
    enable_progress_bar: bool = True


@dataclass
class CheckpointConfig:
    """``last.ckpt`` is written at the end of every epoch, and also every ``every_n_steps``
    optimiser steps and/or ``every_n_minutes`` when set (long epochs); best-k is separate."""

    every_n_steps: Optional[int] = None
    every_n_minutes: Optional[float] = None
    # Metric that selects the best-k checkpoints best-*.ckpt (None: none are kept).
    monitor: Optional[str] = None
    mode: str = "max"
    save_top_k: int = 1
    # How often best-k is considered, in epochs.
    every_n_epochs: int = 1


@dataclass
class WandbConfig:
    # online | offline | disabled | auto (online when an API key is configured, else offline).
    mode: str = "auto"
    project: str = "clipdistill"
    entity: Optional[str] = None
    tags: list = field(default_factory=list)


@dataclass
class LoggerConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)
    csv: bool = True


@dataclass
class RunConfig:
    method: str = "zeroshot"
    experiment: str = "default"
    seed: int = 1
    output_dir: str = "runs"
    # "last" (the newest run of this experiment), a run folder, or a checkpoint file.
    resume: Optional[str] = None
    # Config keys a resume may change (e.g. [trainer.max_epochs]; "section.*" for a section).
    resume_allow: list = field(default_factory=list)
    # Write an export of the learned state at the end of training.
    export: bool = True
    student: BackboneConfig = field(default_factory=BackboneConfig)
    teacher: BackboneConfig = field(default_factory=lambda: BackboneConfig(name="synthetic-teacher"))
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


_SECTIONS: dict[str, type] = {}


def register_config_section(name: str, schema: type) -> type:
    """Add a top-level section (a dataclass) owned by a method package, e.g. ``kdpl``."""
    if name in {f.name for f in dataclasses.fields(RunConfig)}:
        raise ValueError(f"config section {name!r} clashes with a core section")
    existing = _SECTIONS.get(name)
    if existing is not None and existing is not schema:
        raise ValueError(f"config section {name!r} is already registered by {existing.__qualname__}")
    _SECTIONS[name] = schema
    return schema


def schema() -> DictConfig:
    """The full structured schema: core sections plus every registered method section."""
    extra = [(name, cls, field(default_factory=cls)) for name, cls in sorted(_SECTIONS.items())]
    full = dataclasses.make_dataclass("Config", extra, bases=(RunConfig,))
    return OmegaConf.structured(full)


def _valid_keys(cfg: DictConfig, dotted_parent: str) -> list[str]:
    node = OmegaConf.select(cfg, dotted_parent) if dotted_parent else cfg
    return sorted(node.keys()) if isinstance(node, DictConfig) else []


def _explain(exc: OmegaConfBaseException, cfg: DictConfig, source: str) -> ConfigError:
    full_key = getattr(exc, "full_key", None) or ""
    if isinstance(exc, (ConfigKeyError, ConfigAttributeError)):
        parent, _, leaf = full_key.rpartition(".")
        valid = ", ".join(_valid_keys(cfg, parent)) or "(none)"
        where = f"under '{parent}'" if parent else "at the top level"
        return ConfigError(f"{source}: unknown config key '{full_key}'. Valid keys {where}: {valid}")
    if isinstance(exc, ValidationError):
        return ConfigError(f"{source}: invalid value for '{full_key}': {str(exc.msg).splitlines()[0]}")
    return ConfigError(f"{source}: {exc}")


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[dict, str]]:
    """Return ``(mapping, source)`` pairs for a file and its includes, includes first."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path in seen:
        raise ConfigError(f"{path}: include cycle ({' -> '.join(map(str, seen + (path,)))})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    includes = data.pop("include", []) or []
    if isinstance(includes, str):
        includes = [includes]
    pieces: list[tuple[dict, str]] = []
    for inc in includes:
        candidates = [path.parent / inc, CONFIG_DIR / inc]
        target = next((c for c in candidates if c.is_file()), None)
        if target is None:
            raise ConfigError(f"{path}: included file '{inc}' not found (looked in {path.parent} and {CONFIG_DIR})")
        pieces.extend(_read_yaml(target.resolve(), seen + (path,)))
    pieces.append((data, str(path)))
    return pieces


def load_config(files: list[str | Path] = (), overrides: list[str] = (), base: DictConfig | None = None) -> DictConfig:
    """Merge YAML ``files`` in order, then ``key=value`` ``overrides``, validating each step.

    ``base`` (default: the schema defaults) is what they are merged onto, e.g. the stored config
    of a checkpoint when ``eval.py`` evaluates it on another split.
    """
    cfg = base if base is not None else schema()
    for file in files:
        for mapping, source in _read_yaml(Path(file).resolve()):
            try:
                cfg = OmegaConf.merge(cfg, mapping)
            except OmegaConfBaseException as exc:
                raise _explain(exc, cfg, source) from exc
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected key=value, e.g. trainer.max_epochs=5")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as exc:
            raise _explain(exc, cfg, f"override '{item}'") from exc
    return cfg


def to_plain(cfg: DictConfig) -> dict:
    """A resolved plain-dict copy (for checkpoints, exports and loggers)."""
    return OmegaConf.to_container(cfg, resolve=True)


def from_plain(data: dict) -> DictConfig:
    """Rebuild a validated config from :func:`to_plain` output (e.g. stored in a checkpoint)."""
    cfg = schema()
    try:
        return OmegaConf.merge(cfg, data)
    except OmegaConfBaseException as exc:
        raise _explain(exc, cfg, "stored config") from exc


def save_config(cfg: DictConfig, path: Path) -> None:
    atomic_write_text(path, OmegaConf.to_yaml(cfg, resolve=True))
