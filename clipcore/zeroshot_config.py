"""The ``zeroshot`` config section (light: the entry points validate configs before torch loads)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from clipcore.config import register_config_section


@dataclass
class ZeroShotConfig:
    # student | teacher: which backbone section of the config to evaluate.
    model: str = "student"
    # None: the dataset's own template (kdpl spec 3.4).
    template: Optional[str] = None


register_config_section("zeroshot", ZeroShotConfig)
