"""Objects built from config sections (kept apart from the config schema, which stays light)."""
from __future__ import annotations

from typing import Sequence

from clipcore.backbone import ClipBackbone, load_backbone, load_encoder
from clipcore.config import ConfigError
from clipcore.encoder import FrozenEncoder

PREPROCESS_CHOICES = ("data", "model")


def backbone_from_config(section) -> ClipBackbone:
    """A prompt-learning student from a ``student`` section (name, pretrained, config, cache_dir)."""
    return load_backbone(section.name, section.pretrained, config=section.config, cache_dir=section.cache_dir)


def encoder_from_config(section) -> FrozenEncoder:
    """Any open_clip model (a teacher, a zero-shot model) from a ``teacher`` / ``student`` section."""
    return load_encoder(section.name, section.pretrained, config=section.config, cache_dir=section.cache_dir)


def uses_own_preprocessing(section, key: str) -> bool:
    """``<key>.preprocess``: True for ``model`` (the model's own size, mean and std)."""
    if section.preprocess not in PREPROCESS_CHOICES:
        raise ConfigError(f"{key}.preprocess={section.preprocess!r}: expected one of {', '.join(PREPROCESS_CHOICES)}")
    return section.preprocess == "model"


def own_normalization(encoder: FrozenEncoder) -> tuple[Sequence[float], Sequence[float]]:
    return tuple(encoder.image_mean), tuple(encoder.image_std)
