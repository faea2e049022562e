"""Registers every declared prompt learner as a method (``method: coop``, ``method: maple`` ...)."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from clipcore.build import backbone_from_config, encoder_from_config, uses_own_preprocessing
from clipcore.config import ConfigError, to_plain
from clipcore.config_schema import BackboneConfig
from clipcore.data.from_config import classification_datamodule, dataset_template, read_splits
from clipcore.data.transforms import resolve_normalization
from clipcore.image_adapter import ImageAdapter
from clipcore.registry import register_method
from kdpl import datasets as _datasets  # noqa: F401  (registers the CoOp datasets)
from kdpl.config import declared_learners
from kdpl.module import PromptLearningModule
from kdpl.objectives.base import FitContext, Objective
from kdpl.objectives.registry import build_objective, objective_class
from kdpl.prompt_teacher import load_prompt_teacher
from kdpl.prompts.registry import build_prompt_learner
from kdpl.settings import learner_settings
from kdpl.tpt import TPTViews, uses_augmix


def build_prompt_method(cfg):
    """Student, datamodule, learner and objective of ``cfg``, in one module."""
    teacher_preprocess = "model" if uses_own_preprocessing(cfg.teacher, "teacher") else "data"
    # The data first: a wrong dataset name or folder is reported before a model loads (or downloads).
    splits = read_splits(cfg.data, cfg.seed, sample_train=objective_class(cfg.objective.name).samples_training_shots)
    student = backbone_from_config(cfg.student)
    datamodule = classification_datamodule(cfg, student.image_size, splits=splits)
    classnames = datamodule.classnames
    objective = build_objective(cfg.objective, classnames, dataset_template(cfg))
    learner = build_prompt_learner(cfg.method, student.freeze(), classnames, learner_settings(cfg))

    def input_view(encoder, preprocess: str = "data"):
        """A frozen model sees the student's batch at its own input size (the identity when the
        sizes agree, as in the reference), in its own mean/std with ``preprocess: model``."""
        mean, std = resolve_normalization(cfg.data.normalization)
        own_mean, own_std = (encoder.image_mean, encoder.image_std) if preprocess == "model" else (mean, std)
        adapter = ImageAdapter(cfg.data.image_size or student.image_size, mean, std,
                               encoder.image_size, own_mean, own_std)
        return None if adapter.is_identity else adapter

    def fit_context(module) -> FitContext:
        trainer = module.trainer
        return FitContext(student=module.student, datamodule=trainer.datamodule, device=module.device,
                          run_dir=Path(trainer.default_root_dir), is_main_process=trainer.is_global_zero,
                          num_shots=cfg.data.num_shots, load_encoder=lambda spec: _encoder(cfg, spec),
                          input_view=input_view, load_prompt_teacher=load_prompt_teacher,
                          log_metrics=lambda m: [lg.log_metrics(m, step=trainer.global_step) for lg in trainer.loggers])

    tpt = test_time_tuning(cfg, datamodule, objective)
    module = PromptLearningModule(to_plain(cfg), student, learner, objective, classnames=classnames,
                                  optim=cfg.optim, max_epochs=cfg.trainer.max_epochs,
                                  teacher_loader=lambda: encoder_from_config(cfg.teacher),
                                  teacher_view=lambda teacher: input_view(teacher, teacher_preprocess),
                                  fit_context=fit_context, tpt=tpt)
    return module, datamodule


def test_time_tuning(cfg, datamodule, objective):
    """The ``tpt`` section when TPT is on (the test loader then yields each image's views), else None."""
    tpt = cfg.tpt
    if not tpt.enabled:
        return None
    if type(objective).eval_logits is not Objective.eval_logits:
        raise ConfigError(f"tpt.enabled=true: objective {objective.name!r} scores images with its own head, "
                          "not the learner's prompts, so there is no prompt for TPT to tune")
    if tpt.views < 2:
        raise ConfigError(f"tpt.views={tpt.views}: expected at least 2 (the original image and augmented views)")
    if not 0 < tpt.selection <= 1 or int(tpt.views * tpt.selection) < 1:
        raise ConfigError(f"tpt.selection={tpt.selection}: expected a fraction in (0, 1] that keeps at least one "
                          f"of the tpt.views={tpt.views} views")
    if tpt.steps < 0 or tpt.lr <= 0:
        raise ConfigError(f"tpt.steps={tpt.steps}, tpt.lr={tpt.lr}: expected steps >= 0 and lr > 0")
    mean, std = resolve_normalization(datamodule.mean, datamodule.std)
    datamodule.test_transform = TPTViews(datamodule.eval_transform, datamodule.image_size, mean, std, tpt.views,
                                         uses_augmix(tpt.augmix, cfg.data.name))
    datamodule.test_batch_size = 1  # the views of one image are one batch
    return tpt


def _encoder(cfg, spec):
    """A frozen model named by an objective: ``student``, ``teacher`` or a model section."""
    if spec in ("student", "teacher"):
        return encoder_from_config(cfg[spec])
    if not isinstance(spec, Mapping):
        raise ConfigError(f"expected 'student', 'teacher' or a model section {{name, pretrained, ...}}, got {spec!r}")
    unknown = set(spec) - set(BackboneConfig.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"model section {dict(spec)}: unknown keys {sorted(unknown)}; expected "
                          f"{sorted(BackboneConfig.__dataclass_fields__)}")
    return encoder_from_config(BackboneConfig(**spec))


for _name in declared_learners():
    register_method(_name)(build_prompt_method)
