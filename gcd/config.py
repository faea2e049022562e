"""The GCD method family (``spectralgcd``, ``simgcd``): its ``gcd`` section, its ``gcd.loss``
section and its data keys (spectralgcd spec §1-§5). Light: no torch.

Core sections are reused for the rest: ``optim`` (one SGD for the head and ``ln_t`` at
``optim.lr``, the trained vision blocks at ``optim.group_lr.backbone``; the family's defaults
below are the reference's), ``data.normalization`` (the method configs set ImageNet statistics,
as the reference), ``trainer.max_epochs`` (the cosine length) and
``trainer.check_val_every_n_epoch`` (the reference evaluates every 5 epochs; set in
``configs/method/*.yaml``).

Templates. The reference filters with ``"a photo of a {} ."`` (``--use_specialized_template``
defaults to 'no' in ``spectral_filtering.py``) but trains with the specialised one for cub and
aircraft ('yes' in ``spectralgcd.py``). Here one flag drives both commands: by default both use
``template``; ``specialized_template: true`` gives the dataset-specific prompt. Parity with the
reference pipeline = filter with the flag off, train with it on.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

from clipcore.config_schema import DataConfig, MethodFamily, register_method_family
from clipcore.templates import fill

GENERIC_TEMPLATE = "a photo of a {} ."
# spec §1.1: applied to every concept (generic ones included) when specialized_template is on.
SPECIALIZED_TEMPLATES = {
    "cub": "a photo of a {}, a type of bird.",
    "aircraft": "a photo of a {}, a type of aircraft.",
}
# spec §5: per-dataset memax_weight of the reference scripts; 1 for anything else.
MEMAX_WEIGHTS = {"cub": 2.0, "scars": 2.0, "aircraft": 1.0, "cifar10": 1.0, "cifar100": 4.0,
                 "imagenet_100": 1.0}


@dataclass
class GCDData(DataConfig):
    """GCD's data keys: the labelled share of the old classes and how it is drawn."""

    value_ranges: ClassVar[dict] = {"prop_train_labels": (0, 1, False)}

    prop_train_labels: float = 0.5
    # The reference draws the labelled subset with seed 0 whatever the run seed.
    split_follows_seed: bool = False


@dataclass
class GCDLossConfig:
    """Weights and temperatures of the SimGCD/SpectralGCD objective (reference defaults)."""

    value_ranges: ClassVar[dict] = {
        "sup_weight": (0, 1, True), "memax_weight": (0, None, True), "student_temp": (0, None, False),
        "warmup_teacher_temp": (0, None, False), "teacher_temp": (0, None, False),
        "warmup_teacher_temp_epochs": (0, None, True), "supcon_temperature": (0, None, False),
        "info_nce_temperature": (0, None, False)}

    sup_weight: float = 0.35
    # None: the reference's per-dataset value (MEMAX_WEIGHTS, 1 for other datasets).
    memax_weight: Optional[float] = None
    student_temp: float = 0.1
    warmup_teacher_temp: float = 0.07
    teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 30
    supcon_temperature: float = 0.07
    info_nce_temperature: float = 1.0


@dataclass
class GCDSection:
    value_ranges: ClassVar[dict] = {
        "tau": (0, None, False), "beta_e": (0, 1, False), "beta_c": (0, 1, False), "trainable_blocks": (0, None, True),
        "feature_dim": (1, None, True), "head_hidden_dim": (1, None, True), "head_bottleneck_dim": (1, None, True)}

    # Full dictionary: an asset name (python -m clipcore.assets list) or a CSV path (ClassName).
    dictionary: str = "spectralgcd/textgcd_tags_dictionary.csv"
    # Filtered concept list written by `python -m gcd.filter`; None: train on the whole dictionary.
    concepts_csv: Optional[str] = None
    template: str = GENERIC_TEMPLATE
    specialized_template: bool = False
    # Temperature of the cross-modal representations z = cos(image, concept)/tau.
    tau: float = 0.01
    beta_e: float = 0.95
    beta_c: float = 0.99
    # Vision blocks of the student that are trained (the reference: the last one).
    trainable_blocks: int = 1
    # Forward + reverse KL to the teacher's representations (spectralgcd only).
    distill: bool = True
    # Output size of ln_t (the head's input) for spectralgcd.
    feature_dim: int = 768
    # DINOHead MLP sizes (reference 2048 / 256; smaller only for tests and demos).
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    # Teacher representations and text features; None: the clipcore cache ($CLIPCORE_CACHE_DIR).
    teacher_cache_dir: Optional[str] = None
    # float16 | float32 storage of the teacher representations (rows stored minus their max).
    teacher_cache_dtype: str = "float16"
    # Write Hungarian-matched confusion matrices (PNG) after the last validation and after test.
    confusion_plots: bool = True
    loss: GCDLossConfig = field(default_factory=GCDLossConfig)


# spec §5: the reference's optimiser (lr 0.1 for the head and ln_t, 0.005 for the backbone block,
# weight decay 5e-5, per-epoch cosine to 1e-3 x lr, no warm-up).
GCD_OPTIM = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-5, "warmup_epochs": 0, "warmup_lr": 0.0,
             "eta_min_ratio": 1e-3, "group_lr": {"backbone": 0.005}}
GCD_METHODS = ("spectralgcd", "simgcd")


def prompt_template(section, dataset: str) -> str:
    """The template of the concept prompts for ``dataset`` (see the module docstring)."""
    if section.specialized_template and dataset in SPECIALIZED_TEMPLATES:
        return SPECIALIZED_TEMPLATES[dataset]
    return section.template


def concept_prompts(template: str, concepts: list[str]) -> list[str]:
    """Concepts are inserted verbatim (the dictionary's spaces kept, as the reference)."""
    return [fill(template, c) for c in concepts]


def memax_weight(loss: GCDLossConfig, dataset: str) -> float:
    if loss.memax_weight is not None:
        return float(loss.memax_weight)
    return MEMAX_WEIGHTS.get(dataset, 1.0)


_OLD_LOSS_KEYS = {"sup_weight": "sup_weight", "memax_weight": "memax_weight", "student_temp": "student_temp",
                  "warmup_teacher_temp": "warmup_teacher_temp", "teacher_temp": "teacher_temp",
                  "warmup_teacher_temp_epochs": "warmup_teacher_temp_epochs",
                  "supcon_temperature": "supcon_temperature", "con_temperature": "info_nce_temperature"}


def _upgrade(plain: dict) -> dict:
    """Before ``optim`` and ``gcd.loss``, the optimiser and the loss settings lived in ``gcd``."""
    section = plain.get("gcd")
    if not isinstance(section, dict) or "lr_head" not in section:
        return plain
    lr = section.pop("lr_head")
    group_lr = {"backbone": section.pop("lr_backbone", GCD_OPTIM["group_lr"]["backbone"])}
    projection = section.pop("lr_projection", lr)
    if projection != lr:
        group_lr["ln_t"] = projection
    plain["optim"] = {**GCD_OPTIM, "lr": lr, "group_lr": group_lr,
                      **{k: section.pop(k) for k in ("momentum", "weight_decay", "eta_min_ratio") if k in section}}
    section["loss"] = {new: section.pop(old) for old, new in _OLD_LOSS_KEYS.items() if old in section}
    return plain


register_method_family(MethodFamily(
    "gcd", methods=lambda: GCD_METHODS, data=GCDData, sections=lambda method, raw: {"gcd": GCDSection},
    defaults={"optim": GCD_OPTIM}, upgrade=_upgrade))
