"""Objects built from config sections (kept apart from the config schema, which stays light)."""
from __future__ import annotations

from clipcore.backbone import ClipBackbone, load_backbone


def backbone_from_config(section) -> ClipBackbone:
    """A backbone from a ``student`` / ``teacher`` section (name, pretrained, config, cache_dir)."""
    return load_backbone(section.name, section.pretrained, config=section.config, cache_dir=section.cache_dir)

