"""Registry of prompt learners: a learner is one file in ``kdpl/prompts/`` with its config class
and ``@register_prompt_learner(name, config=...)``; it is found without any list being edited.

``declared_learners()`` reads the registrations from the source files (no import, no torch: see
``clipcore.declarations``); ``PROMPT_LEARNERS`` holds the classes of the learner modules imported
so far, and ``load_prompt_learners()`` imports all of them.
"""
from __future__ import annotations

import importlib
from typing import Any

from clipcore.config import ConfigError
from kdpl.config import declared_learners
from kdpl.prompts.base import PromptLearner

PROMPT_LEARNERS: dict[str, type[PromptLearner]] = {}


def register_prompt_learner(name: str, *, config: type):
    """Class decorator adding a learner to `PROMPT_LEARNERS` under `name`, with its config class."""

    def wrap(cls: type[PromptLearner]) -> type[PromptLearner]:
        if name in PROMPT_LEARNERS and PROMPT_LEARNERS[name] is not cls:
            raise ValueError(f"prompt learner '{name}' is already registered")
        cls.name = name
        cls.config_class = config
        PROMPT_LEARNERS[name] = cls
        return cls

    return wrap


def learner_class(name: str) -> type[PromptLearner]:
    """The class of learner ``name``, importing its module on first use."""
    if name not in PROMPT_LEARNERS:
        declared = declared_learners()
        if name not in declared:
            raise ConfigError(f"Unknown prompt learner '{name}'; available: {sorted(declared)}")
        importlib.import_module(declared[name].module)
    return PROMPT_LEARNERS[name]


def load_prompt_learners() -> dict[str, type[PromptLearner]]:
    """Import every declared learner; returns ``PROMPT_LEARNERS``."""
    for name in declared_learners():
        learner_class(name)
    return PROMPT_LEARNERS


def build_prompt_learner(name: str, backbone, classnames: list[str], cfg: Any = None) -> PromptLearner:
    """Build the learner `name` on a frozen backbone for `classnames` (``cfg``: its config
    dataclass, a mapping of its fields, or None for the defaults)."""
    return learner_class(name)(backbone, classnames, cfg)
