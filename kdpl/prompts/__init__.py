"""Prompt learners for a frozen CLIP (spec kdpl.md §1): CoOp, CoCoOp, VPT, MaPLe, PromptSRC.

`build_prompt_learner(name, backbone, classnames, cfg)` builds one by registry name; the
registry (`PROMPT_LEARNERS`) is what the tests parametrize over.
"""
from kdpl.prompts.base import PromptConfig, PromptLearner, PromptOutput
from kdpl.prompts.registry import PROMPT_LEARNERS, build_prompt_learner, register_prompt_learner
from kdpl.prompts.cocoop import CoCoOp
from kdpl.prompts.coop import CoOp
from kdpl.prompts.gpa import PromptAggregator, gaussian_weights
from kdpl.prompts.maple import MaPLe
from kdpl.prompts.promptsrc import PromptSRC
from kdpl.prompts.vpt import VPT

__all__ = [
    "PROMPT_LEARNERS", "PromptConfig", "PromptLearner", "PromptOutput", "build_prompt_learner",
    "register_prompt_learner", "CoOp", "CoCoOp", "VPT", "MaPLe", "PromptSRC",
    "PromptAggregator", "gaussian_weights",
]
