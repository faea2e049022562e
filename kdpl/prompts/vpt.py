"""VPT-deep: learned visual tokens in every vision block, fixed text (spec kdpl.md §1.3).

`vision_ctx` tokens are appended after CLS + patches at the input; before each block
i = 1..depth-1 the last `vision_ctx` tokens (the previous block's prompt outputs) are replaced
by that block's own prompts. The text side is the frozen "a photo of a {c}." features, computed
once per class list and kept as a buffer on the learner's device (the reference copies them
from CPU every step).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

from kdpl.prompts.base import PromptLearner
from kdpl.prompts.config import LearnerConfig
from kdpl.prompts.hooks import deep_vision_hook
from kdpl.prompts.registry import register_prompt_learner


@dataclass
class VPTConfig(LearnerConfig):
    depth: int = 12
    vision_ctx: int = 8
    # The frozen hand-crafted text of every class.
    template: str = "a photo of a {}."


@register_prompt_learner("vpt", config=VPTConfig)
class VPT(PromptLearner):
    """Learned: `vision_prompts` `[depth, vision_ctx, Wv]` (12×8×768 = 73,728 for ViT-B/32)."""

    tiny_test_settings = {"depth": 2, "vision_ctx": 2}

    def __init__(self, backbone, classnames: list[str], cfg: Any = None):
        super().__init__(backbone, classnames, cfg)
        self.depth = self.cfg.depth
        self._check_depth(self.depth, backbone.n_vision_blocks or 0, "vision")
        prompts = torch.empty(self.depth, self.cfg.vision_ctx, backbone.vision_width)
        nn.init.normal_(prompts, std=self.cfg.init_std)
        self.vision_prompts = nn.Parameter(prompts)
        self._finish_init(classnames)

    def _build_class_buffers(self) -> None:
        self._set_buffer("fixed_text_features", self._frozen_text_features([self.cfg.template]))

    def encode_images(self, images: Tensor) -> Tensor:
        hook = deep_vision_hook(self.vision_prompts.unbind(0), self._vision_pre_norm)
        return self.backbone.encode_image_blocks(images, hook=hook)

    def encode_class_text(self, class_indices: Optional[Tensor]) -> Tensor:
        features = self.fixed_text_features
        if class_indices is not None:
            features = features[class_indices.to(features.device)]
        return features
