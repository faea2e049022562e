"""MaPLe: coupled (multi-modal) deep prompts (spec kdpl.md §1.4).

Text: `ctx` (the first `n_ctx` words of "a photo of a"; the prompt text keeps the whole phrase,
so the frozen suffix starts at "of a {c}.") at tokens 1..n, and `compound_prompts_text[i-1]`
replacing them before text blocks i = 1..depth-1. Vision: `proj(ctx)` appended after the
patches at the input and `compound_projections[i-1](compound_prompts_text[i-1])` replacing
the last n tokens before vision blocks 1..depth-1: every visual prompt is a function of a text
prompt. Widths come from the backbone (the reference hard-codes 512 → 768).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

from kdpl.prompts.base import PromptLearner
from kdpl.prompts.config import ContextConfig
from kdpl.prompts.hooks import deep_text_hook, deep_vision_hook
from kdpl.prompts.registry import register_prompt_learner


@dataclass
class MaPLeConfig(ContextConfig):
    n_ctx: Optional[int] = 2
    # Blocks of both towers that receive coupled prompts.
    depth: int = 9


@register_prompt_learner("maple", config=MaPLeConfig)
class MaPLe(PromptLearner):
    """Learned: `ctx`, `proj`, `compound_prompts_text` `[depth-1, n, Wt]`, `compound_projections`
    (3,555,072 parameters for ViT-B/32 with n_ctx=2, depth=9)."""

    tiny_test_settings = {"depth": 2, "n_ctx": 2}

    def __init__(self, backbone, classnames: list[str], cfg: Any = None):
        super().__init__(backbone, classnames, cfg)
        self.depth = self.cfg.depth
        self._check_depth(self.depth, backbone.n_text_blocks, "text")
        self._check_depth(self.depth, backbone.n_vision_blocks or 0, "vision")
        text_width, vision_width = backbone.text_width, backbone.vision_width
        ctx, self.prompt_prefix, self.n_ctx = self._init_context(self.cfg.n_ctx, self.cfg.ctx_init, text_width)
        self.ctx = nn.Parameter(ctx)
        self.proj = nn.Linear(text_width, vision_width)
        compound = torch.empty(self.depth - 1, self.n_ctx, text_width)
        nn.init.normal_(compound, std=self.cfg.init_std)
        self.compound_prompts_text = nn.Parameter(compound)
        # The reference deep-copies one Linear (`_get_clones`), so all layers start identical.
        layer = nn.Linear(text_width, vision_width)
        self.compound_projections = nn.ModuleList(copy.deepcopy(layer) for _ in range(self.depth - 1))
        self._finish_init(classnames)

    def _build_class_buffers(self) -> None:
        self._register_prompt_tokens(self.prompt_prefix, self.n_ctx)

    def encode_class_text(self, class_indices: Optional[Tensor]) -> Tensor:
        hook = deep_text_hook(self.compound_prompts_text.unbind(0))
        return self._encode_prompts(self._assemble(self.ctx, class_indices), hook=hook)

    def encode_images(self, images: Tensor) -> Tensor:
        vision_prompts = [self.proj(self.ctx)] + [
            projection(p) for projection, p in zip(self.compound_projections, self.compound_prompts_text)
        ]
        hook = deep_vision_hook(vision_prompts, self._vision_pre_norm)
        return self.backbone.encode_image_blocks(images, hook=hook)
