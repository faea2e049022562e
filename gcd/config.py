"""The ``gcd`` config section (SpectralGCD / SimGCD hyper-parameters, spectralgcd spec §1-§5).

Core sections are reused for the rest: ``data.prop_train_labels``, ``data.split_follows_seed``,
``data.normalization`` (the method configs set ImageNet statistics, as the reference),
``trainer.max_epochs`` (the cosine length) and ``trainer.check_val_every_n_epoch`` (the
reference evaluates every 5 epochs; set in ``configs/method/*.yaml``, the one source of truth).

Templates. The reference filters with ``"a photo of a {} ."`` (``--use_specialized_template``
defaults to 'no' in ``spectral_filtering.py``) but trains with the specialised one for cub and
aircraft ('yes' in ``spectralgcd.py``). Here one flag drives both commands: by default both use
``template``; ``specialized_template: true`` gives the dataset-specific prompt. Parity with the
reference pipeline = filter with the flag off, train with it on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from clipcore.config import register_config_section

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
class GCDSection:
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
    lr_backbone: float = 0.005
    lr_head: float = 0.1
    lr_projection: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-5
    eta_min_ratio: float = 1e-3
    sup_weight: float = 0.35
    # None: the reference's per-dataset value (MEMAX_WEIGHTS, 1 for other datasets).
    memax_weight: Optional[float] = None
    student_temp: float = 0.1
    warmup_teacher_temp: float = 0.07
    teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 30
    con_temperature: float = 1.0
    supcon_temperature: float = 0.07
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


def prompt_template(section, dataset: str) -> str:
    """The template of the concept prompts for ``dataset`` (see the module docstring)."""
    if section.specialized_template and dataset in SPECIALIZED_TEMPLATES:
        return SPECIALIZED_TEMPLATES[dataset]
    return section.template


def concept_prompts(template: str, concepts: list[str]) -> list[str]:
    """Concepts are inserted verbatim (the dictionary's spaces kept, as the reference)."""
    return [template.format(c) for c in concepts]


def memax_weight(section, dataset: str) -> float:
    if section.memax_weight is not None:
        return float(section.memax_weight)
    return MEMAX_WEIGHTS.get(dataset, 1.0)


register_config_section("gcd", GCDSection)
