"""CoCoOp: CoOp context shifted per image by a meta-net (spec kdpl.md §1.2).

π = meta_net(ĩ) (Linear(D→D/16)–ReLU–Linear(→W) on the normalised image feature) is added to
every context token, so every image has its own prompts for every class. The reference loops
over images and encodes all classes per image; here the prompts of all B·C (image, class)
pairs are assembled as one `[B, C, L, W]` tensor and encoded in chunks of `text_chunk_size`; the
start-of-text and context tokens of one image's prompts are encoded once for all its classes.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdpl.prompts.base import PromptLearner, PromptOutput, fp32
from kdpl.prompts.config import ContextConfig
from kdpl.prompts.registry import register_prompt_learner


@dataclass
class CoCoOpConfig(ContextConfig):
    # Meta-net hidden width = embed_dim // meta_net_ratio.
    meta_net_ratio: int = 16


@register_prompt_learner("cocoop", config=CoCoOpConfig)
class CoCoOp(PromptLearner):
    """Learned: `ctx` `[n_ctx, W]` and `meta_net` (35,360 parameters for ViT-B/32)."""

    def __init__(self, backbone, classnames: list[str], cfg: Any = None):
        super().__init__(backbone, classnames, cfg)
        ctx, self.prompt_prefix, self.n_ctx = self._init_context(
            self.cfg.n_ctx, self.cfg.ctx_init, backbone.text_width)
        self.ctx = nn.Parameter(ctx)
        hidden = backbone.embed_dim // self.cfg.meta_net_ratio
        self.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(backbone.embed_dim, hidden)),
            ("relu", nn.ReLU(inplace=True)),
            ("linear2", nn.Linear(hidden, backbone.text_width)),
        ]))
        self._finish_init(classnames)

    def _build_class_buffers(self) -> None:
        self._register_prompt_tokens(self.prompt_prefix, self.n_ctx)

    def forward(self, images: Tensor, class_indices: Optional[Tensor] = None) -> PromptOutput:
        """Logits `[B, C_sel]`; `text_features` are per image, `[B, C_sel, D]`."""
        image_features = F.normalize(self.encode_images(images).float(), dim=-1)
        bias = self.meta_net(image_features)  # [B, W]
        ctx = self.ctx.unsqueeze(0) + bias.unsqueeze(1)  # [B, n_ctx, W]
        # [B, C, D]: the prompts of one image share their context, so each image is a prefix group.
        text = self._encode_prompts(self._assemble(ctx.unsqueeze(1), class_indices))
        with fp32(text):
            text_features = F.normalize(text.float(), dim=-1)
            logits = self.logit_scale() * torch.einsum("bd,bcd->bc", image_features, text_features)
        return PromptOutput(logits, image_features, text_features)
