"""Supervised prompt learning: cross-entropy of the student's logits on the labels (the baselines)."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from kdpl.objectives.base import Objective, ObjectiveResult, TrainingStep
from kdpl.objectives.registry import register_objective


@dataclass
class SupervisedConfig:
    name: str = "supervised"


@register_objective("supervised", config=SupervisedConfig)
class Supervised(Objective):
    def training_loss(self, step: TrainingStep) -> ObjectiveResult:
        output = step.learner(step.images)
        loss = F.cross_entropy(output.logits.float(), step.labels)
        return ObjectiveResult(output, loss, {"train/ce": loss.detach()})
