"""Registers every prompt learner as a method: ``method: coop | cocoop | vpt | maple | promptsrc``."""
from __future__ import annotations

from pathlib import Path

from clipcore.assets import asset_path, read_dictionary_csv
from clipcore.build import backbone_from_config, fill_template
from clipcore.config import ConfigError, to_plain
from clipcore.data import get_dataset
from clipcore.data.from_config import classification_datamodule
from clipcore.registry import register_method
from kdpl import datasets as _datasets  # noqa: F401  (registers the CoOp datasets)
from kdpl.config import OBJECTIVES
from kdpl.module import PromptLearningModule

LEARNERS = {
    "coop": "CoOp: learned context tokens (kdpl spec 1.1)",
    "cocoop": "CoCoOp: context conditioned on the image by a meta-net (1.2)",
    "vpt": "VPT-deep: learned vision tokens at every layer (1.3)",
    "maple": "MaPLe: coupled text and vision prompts (1.4)",
    "promptsrc": "PromptSRC: independent deep prompts with self-regularisation and GPA (1.5)",
}
CA_TEMPLATE = "a photo of a {}."


def load_dictionary(name_or_path: str) -> list[str]:
    path = Path(name_or_path).expanduser()
    return read_dictionary_csv(path if path.is_file() else asset_path(name_or_path))


def build_prompt_method(cfg):
    objective = cfg.kdpl.objective
    if objective not in OBJECTIVES:
        raise ConfigError(f"kdpl.objective={objective!r}: expected one of {', '.join(OBJECTIVES)}")
    student = backbone_from_config(cfg.student)
    datamodule = classification_datamodule(cfg, student.image_size)
    classnames = datamodule.classnames
    train_classnames, teacher_prompts = classnames, None
    if objective == "kdpl_ca":
        train_classnames = load_dictionary(cfg.kdpl.dictionary)
        teacher_prompts = fill_template(cfg.kdpl.teacher_template or CA_TEMPLATE, train_classnames)
    elif objective == "kdpl":
        teacher_prompts = fill_template(cfg.kdpl.teacher_template or get_dataset(cfg.data.name).template, classnames)
    module = PromptLearningModule(
        to_plain(cfg), student, classnames, train_classnames=train_classnames,
        teacher_loader=lambda: backbone_from_config(cfg.teacher), teacher_prompts=teacher_prompts,
    )
    return module, datamodule


for _name, _description in LEARNERS.items():
    register_method(_name, PromptLearningModule, _description)(build_prompt_method)
