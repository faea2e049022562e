"""Registry of prompt learners: tests and method builders look learners up by name."""
from __future__ import annotations

from typing import Mapping
from clipcore.config import ConfigError

from kdpl.prompts.base import PromptConfig, PromptLearner

PROMPT_LEARNERS: dict[str, type[PromptLearner]] = {}


def register_prompt_learner(name: str):
    """Class decorator adding a learner to `PROMPT_LEARNERS` under `name`."""
    def wrap(cls: type[PromptLearner]) -> type[PromptLearner]:
        if name in PROMPT_LEARNERS:
            raise ValueError(f"prompt learner '{name}' is already registered")
        cls.name = name
        PROMPT_LEARNERS[name] = cls
        return cls
    return wrap


def build_prompt_learner(name: str, backbone, classnames: list[str],
                         cfg: PromptConfig | Mapping | None = None) -> PromptLearner:
    """Build the learner `name` on a frozen backbone for `classnames`."""
    if name not in PROMPT_LEARNERS:
        raise ConfigError(f"Unknown prompt learner '{name}'; available: {sorted(PROMPT_LEARNERS)}")
    return PROMPT_LEARNERS[name](backbone, classnames, cfg)
