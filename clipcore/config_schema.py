"""The run configuration's schema: its sections as dataclasses, and the method families.

The core sections (``student``, ``teacher``, ``data``, ``optim``, ``trainer``, ``checkpoint``,
``logger``) are shared by every method; a *method family* (:func:`register_method_family`:
zero-shot here, the prompt learners in ``kdpl.config``, GCD in ``gcd.config``) adds the sections
its methods read and the task's ``data`` keys. :func:`schema` builds the structured config of one
method; :mod:`clipcore.config` reads YAML files and overrides onto it.

No torch here either: configs are checked in a fraction of a second.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf

from clipcore.errors import ConfigError

# A config class may bound its numeric fields: ``value_ranges = {field: (lowest, highest, whether
# the lowest itself is allowed)}`` (None: unbounded), checked when a config is loaded (a null is
# skipped). A subclass adds to its bases' bounds. Without them a zero batch size ended in a torch
# traceback and a negative shot count was taken silently.
Ranges = Dict[str, tuple]


def value_ranges(cls: type) -> Ranges:
    """The bounds ``cls`` and its bases declare (a subclass's win)."""
    merged: Ranges = {}
    for klass in reversed(getattr(cls, "__mro__", ())):
        merged.update(vars(klass).get("value_ranges", {}))
    return merged



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

    value_ranges: ClassVar[Ranges] = {
        "batch_size": (1, None, True), "eval_batch_size": (1, None, True), "num_workers": (0, None, True),
        "image_size": (1, None, True), "max_corrupt_fraction": (0, 1, True), "cache_memory_fraction": (0, 1, False)}

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

    value_ranges: ClassVar[Ranges] = {"num_shots": (0, None, True), "min_crop_scale": (0, 1, False)}

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

    value_ranges: ClassVar[Ranges] = {
        "lr": (0, None, True), "momentum": (0, 1, True), "weight_decay": (0, None, True),
        "warmup_epochs": (0, None, True), "warmup_lr": (0, None, True), "eta_min_ratio": (0, 1, True)}

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
    # -1 epochs or steps: as many as the other budget takes (Lightning).
    value_ranges: ClassVar[Ranges] = {
        "max_epochs": (-1, None, True), "max_steps": (-1, None, True), "num_nodes": (1, None, True),
        "log_every_n_steps": (1, None, True), "accumulate_grad_batches": (1, None, True)}

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

    value_ranges: ClassVar[Ranges] = {"every_n_epochs": (1, None, True), "save_top_k": (-1, None, True)}

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
    return copy.deepcopy(shared_schema(method, raw))


# Built schemas by (family, method, sections): building one costs ~35 ms on a CPU, a copy ~5 ms,
# and every load_config needs one (an unknown-key error builds one per method and variant).
_SCHEMAS: dict[tuple, tuple[MethodFamily, DictConfig]] = {}


def shared_schema(method: str, raw: Optional[Mapping]) -> DictConfig:
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
