"""Prompt learners for a frozen CLIP (spec kdpl.md §1): CoOp, CoCoOp, VPT, MaPLe, PromptSRC, and
any learner added as one file in this folder (see ``kdpl.prompts.registry``).

Names are imported on first use, so ``import kdpl.prompts.config`` (light) never imports torch.
``PROMPT_LEARNERS`` is the registry with every learner loaded: what the tests parametrize over.
"""
import importlib

_EXPORTS = {
    "PromptLearner": "kdpl.prompts.base", "PromptOutput": "kdpl.prompts.base",
    "register_prompt_learner": "kdpl.prompts.registry", "build_prompt_learner": "kdpl.prompts.registry",
    "learner_class": "kdpl.prompts.registry", "load_prompt_learners": "kdpl.prompts.registry",
    "PromptAggregator": "kdpl.prompts.gpa", "gaussian_weights": "kdpl.prompts.gpa",
    "LearnerConfig": "kdpl.prompts.config", "ContextConfig": "kdpl.prompts.config",
}

__all__ = ["PROMPT_LEARNERS", *_EXPORTS]


def __getattr__(name):
    if name == "PROMPT_LEARNERS":
        return importlib.import_module("kdpl.prompts.registry").load_prompt_learners()
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'kdpl.prompts' has no attribute {name!r}")
