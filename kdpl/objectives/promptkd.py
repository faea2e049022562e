"""PromptKD (Li et al., CVPR 2024; zhengli97/PromptKD, ``trainers/promptkd.py``): unsupervised
prompt distillation from a larger teacher with its own learned prompts.

The teacher is a prompt learner trained by this framework and loaded from its export
(``objective.teacher_export``; the reference loads a PromptSRC ViT-L/14 checkpoint). Its class
text features are computed once and stored with the student (the ``objective_head.teacher_text``
buffer, in checkpoints and exports). The student learns its learner's tensors and a projector
(``Feature_Trans_Module_two_layer``: 1x1 conv = linear, BatchNorm, ReLU, linear) from its image
features to the teacher's feature space. Its logits are ``exp(student logit_scale) *
cos(projector(student image feature), teacher text feature)``; the loss is the reference's
``KL(softmax(t / T) || log_softmax(s / T))`` summed, times ``T^2``, divided by the number of
logits, times ``kd_weight``; labels are never read. Evaluation scores the same way, with the
stored teacher text features of the evaluated classes: the teacher is not loaded.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from clipcore.config import ConfigError
from kdpl.objectives.base import FitContext, Objective, ObjectiveResult, TrainingStep
from kdpl.objectives.registry import register_objective
from kdpl.prompts.base import PromptOutput


@dataclass
class PromptKDConfig:
    name: str = "promptkd"
    # Export folder of the teacher's prompt-learning run (clipdistill export / <run>/exports/final).
    teacher_export: Optional[str] = None
    # TRAINER.PROMPTKD.TEMPERATURE; KD_WEIGHT as scripts/promptkd/base2new_train.sh sets it
    # (1000; the config default, 1.0, is overridden there: the loss is a mean over B x C).
    temperature: float = 1.0
    kd_weight: float = 1000.0
    # Train on the unlabelled images of every class (the reference's transductive setting);
    # the b2n protocol then trains its cell on all classes and evaluates base and novel.
    transductive: bool = True


class PromptKDHead(nn.Module):
    """The learned projector and the stored teacher text features (unit norm, fp32)."""

    def __init__(self, student_dim: int, teacher_dim: int, teacher_text: Optional[torch.Tensor] = None):
        super().__init__()
        self.projector = nn.Sequential(nn.Linear(student_dim, teacher_dim), nn.BatchNorm1d(teacher_dim),
                                       nn.ReLU(inplace=True), nn.Linear(teacher_dim, teacher_dim))
        text = teacher_text if teacher_text is not None else torch.zeros(0, teacher_dim)
        self.register_buffer("teacher_text", text.float())


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The reference's L_ukd (before ``kd_weight``)."""
    kl = F.kl_div(F.log_softmax(student_logits / temperature, dim=1), F.softmax(teacher_logits / temperature, dim=1),
                  reduction="sum")
    return kl * (temperature * temperature) / student_logits.numel()


@register_objective("promptkd", config=PromptKDConfig)
class PromptKD(Objective):
    samples_training_shots = False   # SHOTS=0: every training image
    keeps_learner_regularization = False  # the reference's student has no SCL loss nor GPA

    def __init__(self, settings, classnames: list[str], dataset_template: str):
        super().__init__(settings, classnames, dataset_template)
        if self.settings.temperature <= 0:
            raise ConfigError(f"objective.temperature={self.settings.temperature}: expected > 0")
        self.head: Optional[PromptKDHead] = None
        self.teacher = None
        self.teacher_view = None
        self.head_classnames: list[str] = []

    # -- set-up -----------------------------------------------------------------------------
    def setup_fit(self, context: FitContext) -> None:
        if self.head is not None and self.teacher is not None:
            return
        if not self.settings.teacher_export:
            raise ConfigError("objective.teacher_export is not set: PromptKD needs the export folder of a trained "
                              "teacher (e.g. PromptSRC on a ViT-L/14: clipdistill export --ckpt ... --out DIR)")
        self.teacher = context.load_prompt_teacher(self.settings.teacher_export, self.train_classnames())
        with torch.no_grad():
            text = F.normalize(self.teacher.encode_class_text(None).float(), dim=-1)
        if self.head is None:
            self.head = PromptKDHead(context.student.embed_dim, text.shape[-1], text)
        else:  # resumed: the checkpoint's head is loaded over it afterwards
            self.head.teacher_text = text
        self.head_classnames = self.train_classnames()

    def prepare_fit(self, context: FitContext) -> None:
        self.teacher.to(context.device)
        view = context.input_view(self.teacher.backbone, "data")
        self.teacher_view = view.to(context.device) if view is not None else (lambda images: images)

    def restore_head(self, state: dict, extra: dict) -> None:
        """A head with the shapes of a checkpoint's or export's tensors (kept when a resumed fit
        already built one of those shapes: the optimiser will hold its parameters)."""
        projector = state["objective_head.projector.0.weight"]
        text = state["objective_head.teacher_text"]
        same = (self.head is not None and self.head.teacher_text.shape == text.shape
                and self.head.projector[0].weight.shape == projector.shape)
        if not same:
            self.head = PromptKDHead(projector.shape[1], projector.shape[0], torch.zeros(text.shape))
        self.head_classnames = list(extra.get("teacher_classnames", []))

    def extra_state(self) -> dict:
        return {"teacher_classnames": self.head_classnames}

    # -- scoring -----------------------------------------------------------------------------
    def student_logits(self, learner, images: torch.Tensor, classnames: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        features = F.normalize(self.head.projector(learner.encode_images(images).float()), dim=-1)
        text = self.head.teacher_text[self._class_rows(classnames)]
        return learner.logit_scale() * features @ text.t(), features

    def _class_rows(self, classnames: list[str]) -> torch.Tensor:
        if classnames == self.head_classnames:
            return torch.arange(len(classnames), device=self.head.teacher_text.device)
        index = {name: i for i, name in enumerate(self.head_classnames)}
        missing = [c for c in classnames if c not in index]
        if missing:
            raise ConfigError(f"PromptKD stores the teacher's text features of the {len(index)} classes it was trained "
                              f"on; {len(missing)} evaluated classes are not among them (e.g. {missing[:3]}). "
                              "Evaluate on those classes, or train with objective.transductive=true on every class")
        return torch.tensor([index[c] for c in classnames], device=self.head.teacher_text.device)

    def eval_logits(self, learner, images: torch.Tensor, classnames: list[str]) -> torch.Tensor:
        return self.student_logits(learner, images, classnames)[0]

    def training_loss(self, step: TrainingStep) -> ObjectiveResult:
        with torch.no_grad():
            teacher = self.teacher
            image = F.normalize(teacher.encode_images(self.teacher_view(step.images)).float(), dim=-1)
            teacher_logits = teacher.logit_scale() * image @ self.head.teacher_text.t()
        logits, features = self.student_logits(step.learner, step.images, self.head_classnames)
        loss = self.settings.kd_weight * distillation_loss(logits, teacher_logits, self.settings.temperature)
        agreement = (logits.argmax(-1) == teacher_logits.argmax(-1)).float().mean()
        output = PromptOutput(logits, features, self.head.teacher_text)
        return ObjectiveResult(output, loss, {"train/kd": loss.detach(), "train/teacher_agreement": agreement})
