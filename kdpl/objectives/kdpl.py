"""KDPL (kdpl spec 2): symmetric KL between the student and a frozen teacher over the training
classes; labels are never read."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from clipcore.classnames import prompts_for
from kdpl.distill import symmetric_kl
from kdpl.objectives.base import Objective, ObjectiveResult, TrainingStep, check_choice
from kdpl.objectives.config import DistillationConfig
from kdpl.objectives.registry import register_objective


@dataclass
class KDPLConfig(DistillationConfig):
    name: str = "kdpl"


@register_objective("kdpl", config=KDPLConfig)
class KDPL(Objective):
    uses_teacher = True

    def __init__(self, settings, classnames: list[str], dataset_template: str):
        super().__init__(settings, classnames, dataset_template)
        check_choice("objective.teacher_logit_scale", self.settings.teacher_logit_scale, ("student", "teacher"))

    def teacher_prompts(self) -> list[str]:
        return prompts_for(self.settings.teacher_template or self.dataset_template, self.train_classnames())

    def select_classes(self, teacher_logits: torch.Tensor, step: TrainingStep) -> Optional[torch.Tensor]:
        """Classes distilled this step (None: all of them)."""
        return None

    def training_loss(self, step: TrainingStep) -> ObjectiveResult:
        teacher_logits = step.teacher_logits(step.images)
        logs = {}
        selected = self.select_classes(teacher_logits, step)
        if selected is not None:
            teacher_logits = teacher_logits[:, selected]
            logs["train/selected_classes"] = torch.tensor(float(selected.numel()))
        output = step.learner(step.images, class_indices=selected)
        loss, forward, reverse = symmetric_kl(output.logits, teacher_logits, self.settings.alpha, self.settings.beta)
        agreement = (output.logits.argmax(-1) == teacher_logits.argmax(-1)).float().mean()
        teacher_p = teacher_logits.softmax(-1)
        logs.update({"train/kl_forward": forward.detach(), "train/kl_reverse": reverse.detach(),
                     "train/teacher_agreement": agreement,
                     "train/teacher_entropy": -(teacher_p * teacher_p.clamp_min(1e-12).log()).sum(-1).mean()})
        return ObjectiveResult(output, loss, logs)
