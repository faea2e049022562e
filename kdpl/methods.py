"""Registers every declared prompt learner as a method (``method: coop``, ``method: maple`` ...)."""
from __future__ import annotations

from clipcore.build import backbone_from_config, encoder_from_config, uses_own_preprocessing
from clipcore.config import to_plain
from clipcore.data.from_config import classification_datamodule, dataset_template
from clipcore.data.transforms import resolve_normalization
from clipcore.image_adapter import ImageAdapter
from clipcore.registry import register_method
from kdpl import datasets as _datasets  # noqa: F401  (registers the CoOp datasets)
from kdpl.config import declared_learners
from kdpl.module import PromptLearningModule
from kdpl.objectives.registry import build_objective
from kdpl.prompts.registry import build_prompt_learner


def learner_settings(cfg) -> dict:
    """The ``prompt`` section; a learner's ``template: null`` is the dataset's template."""
    settings = to_plain(cfg.prompt)
    if "template" in settings and settings["template"] is None:
        settings["template"] = dataset_template(cfg)
    return settings


def build_prompt_method(cfg):
    """Student, datamodule, learner and objective of ``cfg``, in one module."""
    teacher_sees_own_input = uses_own_preprocessing(cfg.teacher, "teacher")
    student = backbone_from_config(cfg.student)
    datamodule = classification_datamodule(cfg, student.image_size)
    classnames = datamodule.classnames
    objective = build_objective(cfg.objective, classnames, dataset_template(cfg))
    learner = build_prompt_learner(cfg.method, student.freeze(), classnames, learner_settings(cfg))

    def teacher_view(teacher):
        """The teacher sees the student's batch at its own input size (the identity when the sizes
        agree, as in the reference), in its own mean/std with ``teacher.preprocess: model``."""
        mean, std = resolve_normalization(cfg.data.normalization)
        own_mean, own_std = (teacher.image_mean, teacher.image_std) if teacher_sees_own_input else (mean, std)
        adapter = ImageAdapter(cfg.data.image_size or student.image_size, mean, std,
                               teacher.image_size, own_mean, own_std)
        return None if adapter.is_identity else adapter

    module = PromptLearningModule(to_plain(cfg), student, learner, objective, classnames=classnames,
                                  optim=cfg.optim, max_epochs=cfg.trainer.max_epochs,
                                  teacher_loader=lambda: encoder_from_config(cfg.teacher),
                                  teacher_view=teacher_view)
    return module, datamodule


for _name in declared_learners():
    register_method(_name)(build_prompt_method)
