"""KDPL-CA, class-agnostic KDPL (kdpl spec 2.3): the student's classes are a large dictionary
(20,930 Open Images names) and each step distils the top-K classes of the teacher's batch-mean
softmax, computed once for the global batch under DDP. No class names of the dataset are read
while training; evaluation uses the dataset's classes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch

from clipcore.assets import load_dictionary
from clipcore.classnames import prompts_for
from kdpl.distill import mean_teacher_probs, topk_classes
from kdpl.objectives.base import TrainingStep
from kdpl.objectives.config import DistillationConfig
from kdpl.objectives.kdpl import KDPL
from kdpl.objectives.registry import register_objective


@dataclass
class KDPLCAConfig(DistillationConfig):
    value_ranges: ClassVar[dict] = {"k_max": (1, None, True)}

    name: str = "kdpl_ca"
    # Classes distilled per step (top-K of the teacher's mean softmax over the dictionary).
    k_max: int = 1000
    # The class dictionary: an asset name (`python -m clipcore.assets list`) or a CSV path.
    dictionary: str = "spectralgcd/openimages_dictionary.csv"
    teacher_template: Optional[str] = "a photo of a {}."


@register_objective("kdpl_ca", config=KDPLCAConfig)
class KDPLCA(KDPL):
    def __init__(self, settings, classnames: list[str], dataset_template: str):
        super().__init__(settings, classnames, dataset_template)
        self._dictionary = load_dictionary(self.settings.dictionary, "objective.dictionary")

    def train_classnames(self) -> list[str]:
        return self._dictionary

    def teacher_prompts(self) -> list[str]:
        return prompts_for(self.settings.teacher_template or "a photo of a {}.", self._dictionary)

    def select_classes(self, teacher_logits: torch.Tensor, step: TrainingStep) -> Optional[torch.Tensor]:
        # One selection for the global batch, as on a single device.
        probs = step.mean_over_ranks(mean_teacher_probs(teacher_logits))
        return topk_classes(probs, self.settings.k_max)
