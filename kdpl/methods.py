"""Registers every declared prompt learner as a method (``method: coop``, ``method: maple`` ...)."""
from __future__ import annotations

from clipcore.build import backbone_from_config
from clipcore.config import to_plain
from clipcore.data import get_dataset
from clipcore.data.from_config import classification_datamodule
from clipcore.registry import register_method
from kdpl import datasets as _datasets  # noqa: F401  (registers the CoOp datasets)
from kdpl.config import declared_learners
from kdpl.module import PromptLearningModule
from kdpl.objectives.registry import build_objective
from kdpl.prompts.registry import build_prompt_learner


def build_prompt_method(cfg):
    """Student, datamodule, learner and objective of ``cfg``, in one module."""
    student = backbone_from_config(cfg.student)
    datamodule = classification_datamodule(cfg, student.image_size)
    classnames = datamodule.classnames
    objective = build_objective(cfg.objective, classnames, get_dataset(cfg.data.name).template)
    learner = build_prompt_learner(cfg.method, student.freeze(), classnames, to_plain(cfg.prompt))
    module = PromptLearningModule(to_plain(cfg), student, learner, objective, classnames=classnames,
                                  optim=cfg.optim, max_epochs=cfg.trainer.max_epochs,
                                  teacher_loader=lambda: backbone_from_config(cfg.teacher))
    return module, datamodule


for _name in declared_learners():
    register_method(_name)(build_prompt_method)
