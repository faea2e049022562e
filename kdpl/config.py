"""Config sections owned by kdpl: ``prompt`` (learner hyper-parameters) and ``kdpl`` (objective)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from clipcore.config import register_config_section
from kdpl.prompts.base import PromptConfig

OBJECTIVES = ("supervised", "kdpl", "kdpl_ca")


@dataclass
class KDPLSection:
    # supervised (cross-entropy) | kdpl (symmetric KL to the teacher) | kdpl_ca (class-agnostic).
    objective: str = "supervised"
    alpha: float = 0.5
    beta: float = 0.5
    # Classes distilled per step in the class-agnostic form (top-K of the teacher's mean softmax).
    k_max: int = 1000
    # Class-agnostic dictionary: an asset name (see `python -m clipcore.assets list`) or a CSV path.
    dictionary: str = "spectralgcd/openimages_dictionary.csv"
    # Teacher prompt template; None: the dataset's template ("a photo of a {}." for KDPL-CA).
    teacher_template: Optional[str] = None
    # student (reference: the teacher's logits use the student's logit scale) | teacher.
    teacher_logit_scale: str = "student"
    # Folder of cached teacher text features (default: <cache>/text_features).
    text_cache_dir: Optional[str] = None


# The learners' own dataclass is the schema of the ``prompt`` section: one source of truth.
register_config_section("prompt", PromptConfig)
register_config_section("kdpl", KDPLSection)
