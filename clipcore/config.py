"""Typed run configuration: YAML files merged in order, then ``key=value`` overrides.

The schema is a tree of dataclasses and depends on the method. The core sections (``student``,
``teacher``, ``data``, ``optim``, ``trainer``, ``checkpoint``, ``logger``) are shared; a *method
family* (:func:`register_method_family`: zero-shot, the prompt learners, GCD) adds the sections its
methods read and the task's ``data`` keys. So a key the chosen method does not read is an error,
like a typo, and the message says which methods read it. Every merge is validated: an unknown key
lists the valid keys beside it, a value of the wrong type names the key, and both name the file
or override they came from.

A YAML file may start with ``include: [other.yaml, ...]``; included files (paths relative to the
including file, or to the shipped ``configs/``) are merged first, so experiments compose config
groups. An override's value is read as YAML (``5``, ``null``, ``[a,b]``); a value YAML cannot
read, or one that does not fit a string field (``a photo of: "{}"``), is taken as the text.

This module and the family modules import no torch: configs are checked in a fraction of a second.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from clipcore.errors import ConfigError
from clipcore.io import atomic_write_text

# Folders of shipped configs: ``-c trainer/cpu.yaml`` and ``include:`` entries are looked up
# there when they are not files. The application registers its own (clipdistill/configs).
_CONFIG_DIRS: list[Path] = []


def register_config_dir(path: Path) -> None:
    path = Path(path).resolve()
    if path not in _CONFIG_DIRS:
        _CONFIG_DIRS.append(path)


def config_dirs() -> list[Path]:
    return list(_CONFIG_DIRS)


def find_config_file(name: str | Path, relative_to: Optional[Path] = None) -> Optional[Path]:
    """``name`` as given (or relative to ``relative_to``), else a shipped config of that name."""
    name = Path(name).expanduser()
    candidates = [relative_to / name] if relative_to is not None else [name]
    if not name.is_absolute():
        candidates += [folder / name for folder in _CONFIG_DIRS]
    return next((c.resolve() for c in candidates if c.is_file()), None)


@dataclass
class BackboneConfig:
    # Built-in open_clip name (e.g. ViT-B-32-quickgelu), local-dir:/path, or a name a registered
    # resolver serves (clipcore.backbone.register_backbone_resolver).
    name: str = "ViT-B-32-quickgelu"
    # open_clip pretrained tag (openai, dfn5b, ...), a local .pt/.bin/.safetensors file, or null
    # (random weights).
    pretrained: Optional[str] = "openai"
    # JSON file with an open_clip model config: builds the architecture with random weights.
    config: Optional[str] = None
    cache_dir: Optional[str] = None
    # data: the model sees images normalised as data.normalization says (the references) |
    # model: with the model's own mean and std (SigLIP's 0.5/0.5 ...). A teacher always gets
    # its own input size; a zero-shot model with `model` too (else data.image_size, if set).
    preprocess: str = "data"


DEFAULT_MAX_WORKERS = 8


def default_num_workers() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    return max(0, min(DEFAULT_MAX_WORKERS, cpus))


@dataclass
class DataConfig:
    """Keys of every task; the method family adds its own (see ClassificationData)."""

    # A registered dataset name (configs/data/*.yaml).
    name: Optional[str] = None
    root: str = "data"
    batch_size: int = 32
    eval_batch_size: int = 100
    # Loader worker processes per training process; default: the CPUs this process may use,
    # at most DEFAULT_MAX_WORKERS (0 loads in the main process).
    num_workers: int = field(default_factory=lambda: default_num_workers())
    # None: the student backbone's input size.
    image_size: Optional[int] = None
    # clip | imagenet: normalisation statistics.
    normalization: str = "clip"
    # Skip undecodable images (each is logged) instead of stopping; fail when more than
    # max_corrupt_fraction of a split is skipped.
    skip_corrupt: bool = False
    max_corrupt_fraction: float = 0.01
    # Training input pipeline (clipcore.data.pipeline): cpu (decode and augment each draw in the
    # loader workers) | cached (decode once per fit into RAM) | gpu (cache on the training device,
    # crops, flips and normalisation there).
    pipeline: str = "cpu"
    # Largest share of the free RAM (cached) or device memory (gpu) the cache may take.
    cache_memory_fraction: float = 0.5


@dataclass
class ClassificationData(DataConfig):
    """Few-shot classification (zero-shot and the prompt learners)."""

    # Few-shot images per class for training (None or 0: use every training image).
    num_shots: Optional[int] = 16
    # all | base | new (base-to-novel protocol, kdpl spec 3.3).
    subsample_classes: str = "all"
    # Smallest crop of the random-resized-crop augmentation (Dassl: 0.08).
    min_crop_scale: float = 0.08
    # Prompt template of the dataset's classes ({} or {c} is the class name); None: the
    # registered dataset's own (CoOp's per-dataset prompt; 'a photo of a {}.' for image_folder).
    template: Optional[str] = None


@dataclass
class OptimConfig:
    """SGD with momentum and a per-epoch schedule (the optimiser of both references): constant
    warm-up epochs at ``warmup_lr``, then cosine from ``lr`` to ``eta_min_ratio * lr``. CLIP-LoRA's
    AdamW with a per-step cosine is ``name: adamw`` + ``interval: step``."""

    # sgd | adamw
    name: str = "sgd"
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 5e-4
    # Warm-up length, in epochs or (interval: step) in steps.
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    eta_min_ratio: float = 0.0
    # epoch | step: the cosine runs over trainer.max_epochs epochs or trainer.max_steps steps.
    interval: str = "epoch"
    # AdamW's betas.
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    # Learning rates of named parameter groups that differ from lr (GCD: {backbone: 0.005}).
    group_lr: Dict[str, float] = field(default_factory=dict)


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
    # torch.compile the residual blocks of the frozen towers (and the student's), with this
    # backend (inductor; aot_eager traces without generating code).
    compile: bool = False
    compile_backend: str = "inductor"


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
    teacher: BackboneConfig = field(default_factory=lambda: BackboneConfig("ViT-H-14-quickgelu", "dfn5b"))
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


CORE_SECTIONS = frozenset(f.name for f in dataclasses.fields(RunConfig))


@dataclass(frozen=True)
class MethodFamily:
    """Methods that read the same sections.

    ``methods()`` lists them (cheaply: no torch); ``data`` is the schema of the ``data`` section
    (``DataConfig`` plus the task's keys); ``sections(method, raw)`` returns the method's own
    sections (``{name: dataclass}``), where ``raw`` is the merged, unvalidated config (so a
    section may depend on a selector such as ``objective.name``); ``defaults`` replace core
    defaults for these methods (e.g. GCD's optimiser); ``variants(method)`` lists the selector
    settings whose schemas differ (``[{"objective": {"name": "kdpl"}}, ...]``), used to tell a
    user which methods read a key.
    """

    name: str
    methods: Callable[[], Sequence[str]]
    data: type = ClassificationData
    sections: Callable[[str, Mapping], dict[str, type]] = lambda method, raw: {}
    defaults: Mapping = field(default_factory=dict)
    variants: Callable[[str], Sequence[Mapping]] = lambda method: ({},)
    # Rewrites a config stored by an earlier version into this version's keys (see upgrade_stored).
    upgrade: Callable[[dict], dict] = lambda plain: plain


_FAMILIES: dict[str, MethodFamily] = {}


def register_method_family(family: MethodFamily) -> MethodFamily:
    _FAMILIES[family.name] = family
    return family


def method_families() -> list[MethodFamily]:
    return list(_FAMILIES.values())


def known_methods() -> list[str]:
    return sorted(m for family in _FAMILIES.values() for m in family.methods())


def family_of(method: str) -> MethodFamily:
    for family in _FAMILIES.values():
        if method in family.methods():
            return family
    raise ConfigError(f"unknown method {method!r} (config key 'method'). Known methods: "
                      f"{', '.join(known_methods()) or '(none registered)'}")


def schema(method: str = "zeroshot", raw: Optional[Mapping] = None) -> DictConfig:
    """The structured config of ``method``: core sections, its family's data keys and sections."""
    return copy.deepcopy(_shared_schema(method, raw))


# Built schemas by (family, method, sections): building one costs ~35 ms on a CPU, a copy ~5 ms,
# and every load_config needs one (an unknown-key error builds one per method and variant).
_SCHEMAS: dict[tuple, tuple[MethodFamily, DictConfig]] = {}


def _shared_schema(method: str, raw: Optional[Mapping]) -> DictConfig:
    """:func:`schema` without the copy: the cached object itself, never to be modified."""
    family = family_of(method)
    sections = family.sections(method, raw or {})
    key = (family.name, method, tuple(sections.items()))
    hit = _SCHEMAS.get(key)
    if hit is not None and hit[0] is family:  # a family registered again under its name is rebuilt
        return hit[1]
    clash = CORE_SECTIONS & set(sections) - {"data"}
    if clash:
        raise ValueError(f"method family {family.name!r} redefines core sections {sorted(clash)}")
    fields = [("data", family.data, field(default_factory=family.data))]
    fields += [(name, cls, field(default_factory=cls)) for name, cls in sections.items()]
    full = dataclasses.make_dataclass(f"{family.name.title()}Config", fields, bases=(RunConfig,))
    cfg = OmegaConf.structured(full)
    if family.defaults:
        cfg = OmegaConf.merge(cfg, family.defaults)
    cfg.method = method
    _SCHEMAS[key] = (family, cfg)
    return cfg


@dataclass
class ZeroShotConfig:
    # student | teacher: which backbone section of the config to evaluate.
    model: str = "student"
    # The prompt templates, ensembled (each template's text features normalised, averaged over
    # templates, renormalised): a list of templates, one template, or a shipped set's name
    # (dataset | imagenet80 | cifar18 | promptsrc60, see clipcore.templates). None or 'dataset':
    # the dataset's template (data.template, else the registered one; kdpl spec 3.4).
    templates: Any = None


def _upgrade_zeroshot(plain: dict) -> dict:
    """v0.1 stored one ``zeroshot.template``; it is a one-template list now."""
    section = plain.get("zeroshot")
    if isinstance(section, dict) and "template" in section:
        template = section.pop("template")
        section.setdefault("templates", None if template is None else [template])
    return plain


# Zero-shot CLIP is the core's own method (and the default one).
register_method_family(MethodFamily(
    "zeroshot", methods=lambda: ["zeroshot"], data=ClassificationData,
    sections=lambda method, raw: {"zeroshot": ZeroShotConfig}, upgrade=_upgrade_zeroshot))


# -- errors -------------------------------------------------------------------------------------
def _valid_keys(cfg: DictConfig, dotted_parent: str) -> list[str]:
    node = OmegaConf.select(cfg, dotted_parent) if dotted_parent else cfg
    return sorted(node.keys()) if isinstance(node, DictConfig) else []


def _readers_of(full_key: str, cfg: DictConfig) -> list[str]:
    """The methods (and selector settings) whose schema has ``full_key``, ``cfg``'s excluded; a
    method that reads it under every variant is named once."""
    readers = []
    for family in _FAMILIES.values():
        for other in family.methods():
            variants = family.variants(other)
            reading = []
            for variant in variants:
                try:
                    candidate = _shared_schema(other, variant)
                except ConfigError:
                    continue
                if OmegaConf.select(candidate, full_key, default=_MISSING) is _MISSING:
                    continue
                selectors = [f"{k}.{kk}={vv}" for k, v in variant.items() for kk, vv in v.items()]
                if other == cfg.method and all(OmegaConf.select(cfg, s.split("=")[0]) == s.split("=")[1]
                                               for s in selectors):
                    continue
                reading.append(selectors)
            if reading and len(reading) == len(variants) and other != cfg.method:
                readers.append(other)
            else:
                readers += [f"{other} ({', '.join(sel)})" if sel else other for sel in reading]
    return readers


_MISSING = object()


def _explain(exc: OmegaConfBaseException, cfg: DictConfig, source: str, key: Optional[str] = None) -> ConfigError:
    full_key = getattr(exc, "full_key", None) or ""
    if isinstance(exc, (ConfigKeyError, ConfigAttributeError)):
        parent, _, leaf = full_key.rpartition(".")
        readers = _readers_of(full_key, cfg)
        if readers and key and key.startswith(full_key + "."):
            full_key = key  # name the whole override key, not just its unknown section
        if readers:
            shown = ", ".join(readers[:6]) + (f" and {len(readers) - 6} more" if len(readers) > 6 else "")
            return ConfigError(f"{source}: '{full_key}' is not read by method '{cfg.method}' (it is read by "
                               f"{shown}); remove it for this method")
        valid = ", ".join(_valid_keys(cfg, parent)) or "(none)"
        where = f"under '{parent}'" if parent else "at the top level"
        return ConfigError(f"{source}: unknown config key '{full_key}'. Valid keys {where}: {valid}")
    if isinstance(exc, ValidationError):
        return ConfigError(f"{source}: invalid value for '{full_key}': {str(exc.msg).splitlines()[0]}")
    return ConfigError(f"{source}: {exc}")


# -- reading ------------------------------------------------------------------------------------
@dataclass
class _Piece:
    """One source of config values: a YAML file's mapping, a stored config, or an override."""

    mapping: dict
    source: str
    text: Optional[str] = None  # an override's value as typed (used when YAML misreads it)
    key: Optional[str] = None

    def mapping_leaf(self) -> Any:
        """An override's parsed value."""
        node: Any = self.mapping
        for part in (self.key or "").split("."):
            node = node[part] if part else node
        return node


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> list[_Piece]:
    """The pieces of a file and its includes, includes first."""
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
    pieces: list[_Piece] = []
    for inc in includes:
        target = find_config_file(inc, relative_to=path.parent)
        if target is None:
            where = ", ".join(str(d) for d in [path.parent, *_CONFIG_DIRS])
            raise ConfigError(f"{path}: included file '{inc}' not found (looked in {where})")
        pieces.extend(_read_yaml(target, seen + (path,)))
    pieces.append(_Piece(data, str(path)))
    return pieces


def _override_piece(item: str) -> _Piece:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override '{item}': expected key=value, e.g. trainer.max_epochs=5")
    try:
        value = yaml.safe_load(text) if text.strip() else text
    except yaml.YAMLError:
        value = text  # not YAML (quotes, colons, braces): the text itself
    if isinstance(value, dict) and not text.lstrip().startswith("{"):
        # "a photo of: {}" reads as a YAML mapping; on a command line a mapping is written in
        # braces ({a: 1}) or as dotted keys, so this is text (a template with a colon).
        value = text
    nested: Any = value
    for part in reversed(key.split(".")):
        nested = {part: nested}
    return _Piece(nested, f"override '{item}'", text, key)


def _deep_merge(into: dict, new: Mapping) -> dict:
    for key, value in new.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)
    return into


def _apply(cfg: DictConfig, piece: _Piece) -> DictConfig:
    try:
        return OmegaConf.merge(cfg, piece.mapping)
    except (ConfigKeyError, ConfigAttributeError) as exc:
        raise _explain(exc, cfg, piece.source, piece.key) from exc
    except OmegaConfBaseException as exc:
        if piece.text is None or isinstance(piece.mapping_leaf(), str):
            raise _explain(exc, cfg, piece.source) from exc
        # YAML read the text as something else (a mapping for "a: b", a number ...): the field
        # may want the text itself, e.g. a template with a colon.
        nested: Any = piece.text
        for part in reversed(piece.key.split(".")):
            nested = {part: nested}
        try:
            return OmegaConf.merge(cfg, nested)
        except OmegaConfBaseException:
            raise _explain(exc, cfg, piece.source) from exc


def load_config(files: Sequence[str | Path] = (), overrides: Sequence[str] = (),
                base: DictConfig | Mapping | None = None) -> DictConfig:
    """Merge YAML ``files`` in order, then ``key=value`` ``overrides``, validating each step.

    ``base`` (default: the schema defaults) is what they are merged onto, e.g. the stored config
    of a checkpoint when ``eval.py`` evaluates it on another split.
    """
    pieces: list[_Piece] = []
    if base is not None:
        plain = OmegaConf.to_container(base, resolve=True) if isinstance(base, DictConfig) else dict(base)
        pieces.append(_Piece(upgrade_stored(plain), "stored config"))
    for file in files:
        found = find_config_file(file)
        if found is None:
            shipped = f" or among the shipped configs ({', '.join(map(str, _CONFIG_DIRS))})" if _CONFIG_DIRS else ""
            raise ConfigError(f"config file not found: {file} (looked for it as a path{shipped})")
        pieces.extend(_read_yaml(found))
    pieces.extend(_override_piece(item) for item in overrides)
    raw: dict = {}
    for piece in pieces:
        _deep_merge(raw, piece.mapping)
    method = raw.get("method", RunConfig.method)
    if not isinstance(method, str):
        raise ConfigError(f"config key 'method' must be a method name, got {method!r}")
    # No copy of the shared schema: OmegaConf.merge copies its first argument.
    cfg = merge_pieces(_shared_schema(method, raw), pieces, raw)
    _check_templates(cfg)
    return cfg


def merge_pieces(cfg: DictConfig, pieces: Sequence[_Piece], combined: Mapping) -> DictConfig:
    """``pieces`` merged onto ``cfg`` in order; ``combined`` is their deep merge (later values
    replace earlier ones, mappings merge key by key, as OmegaConf merges).

    One merge of ``combined`` gives the same config as merging the pieces one by one (tested on
    every shipped config) at a fraction of the cost: each OmegaConf merge copies the whole config
    (so ``cfg`` itself is never modified). Only when it fails are the pieces merged one by one, so
    that the error names the file or override at fault (and an override YAML misreads is retried
    as text)."""
    try:
        return OmegaConf.merge(cfg, combined)
    except OmegaConfBaseException:
        pass
    for piece in pieces:
        cfg = _apply(cfg, piece)
    return cfg


def _check_templates(cfg: DictConfig, prefix: str = "") -> None:
    """Every text under a key named ``*template`` is a prompt template, and ``*templates`` a
    template list or set name: a missing placeholder is reported here, before anything runs."""
    from clipcore.templates import check_template, resolve_templates

    for key, value in cfg.items():
        full = f"{prefix}{key}"
        if isinstance(value, DictConfig):
            _check_templates(value, full + ".")
        elif str(key).endswith("templates") and value is not None:
            plain = OmegaConf.to_container(value) if isinstance(value, ListConfig) else value
            resolve_templates(plain, "{}", full)
        elif str(key).endswith("template") and isinstance(value, str):
            check_template(value, full)


def upgrade_stored(plain: Mapping) -> dict:
    """A config stored by an earlier version (a run's config.yaml, a checkpoint, an export),
    in this version's keys: the family moves renamed keys, and sections and data keys the
    method does not read are dropped (earlier versions stored every section for every method)."""
    plain = copy.deepcopy(dict(plain))
    method = plain.get("method", RunConfig.method)
    family = family_of(method)
    plain = family.upgrade(plain)
    reference = _shared_schema(method, plain)
    for key in [k for k in plain if k not in reference]:
        del plain[key]
    if isinstance(plain.get("data"), dict):
        plain["data"] = {k: v for k, v in plain["data"].items() if k in reference.data}
    return plain


def read_stored(plain: Mapping) -> dict:
    """A stored config as this version would have written it: upgraded, validated, and with
    the defaults of keys added since (for comparing it with a new command line)."""
    return to_plain(load_config(base=plain))


def to_plain(cfg: DictConfig) -> dict:
    """A resolved plain-dict copy (for checkpoints, exports and loggers)."""
    return OmegaConf.to_container(cfg, resolve=True)


def from_plain(data: Mapping) -> DictConfig:
    """Rebuild a validated config from :func:`to_plain` output (e.g. stored in a checkpoint)."""
    return load_config(base=data)


def save_config(cfg: DictConfig, path: Path) -> None:
    atomic_write_text(path, OmegaConf.to_yaml(cfg, resolve=True))
