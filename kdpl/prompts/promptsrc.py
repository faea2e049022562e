"""PromptSRC: independent vision-language deep prompts + self-regularisation (spec kdpl.md §1.5).

Prompts (IVLP): text `ctx` at tokens 1..n (init "a photo of a") and `text_prompts[i-1]`
replacing them before text blocks 1..D_t-1; `vision_prompts[0]` appended after the patches and
`vision_prompts[i]` replacing them before vision blocks 1..D_v-1.

Self-regularisation (L_SCL) pulls the prompted model towards the frozen one:
25·L1(t̃, t̃_zs) + 10·L1(ĩ, ĩ_zs) + KL(p_zs‖p) with the KL summed and divided by B·C. t̃_zs is
the mean over the 60 ImageNet templates of the *unnormalised* zero-shot text features (a
non-persistent buffer, rebuilt with the class list; ``template_average: normalized`` averages
normalised features instead, as CLIP's ensembling does); ĩ_zs comes from the frozen image tower
without prompts. Since the backbone is frozen and prompts are injected only through hooks, the
backbone itself is that tower: the reference's extra CLIP copy for it is not needed.
GPA (Gaussian prompt aggregation) lives in `kdpl.prompts.gpa`; `cfg.gpa_mean/gpa_std` hold its
defaults (15/1 base-to-novel, 6/10 cross-dataset).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clipcore.config import ConfigError
from clipcore.templates import PROMPTSRC_TEMPLATES
from kdpl.prompts.base import PromptLearner, PromptOutput, fp32
from kdpl.prompts.config import ContextConfig
from kdpl.prompts.hooks import deep_text_hook, deep_vision_hook
from kdpl.prompts.registry import register_prompt_learner

TEMPLATE_AVERAGES = ("raw", "normalized")


@dataclass
class PromptSRCConfig(ContextConfig):
    n_ctx: Optional[int] = 4
    # Deep-prompt depth of both towers (9 base-to-novel, 3 cross-dataset); text_depth /
    # vision_depth set them apart.
    depth: int = 9
    text_depth: Optional[int] = None
    vision_depth: Optional[int] = None
    vision_ctx: int = 4
    # L_SCL weights: text features, image features, logits.
    scl_text_weight: float = 25.0
    scl_image_weight: float = 10.0
    scl_logits_weight: float = 1.0
    # Gaussian prompt aggregation over epochs: mean and std (15/1 base-to-novel, 6/10 cross-dataset).
    gpa_mean: Optional[float] = 15.0
    gpa_std: Optional[float] = 1.0
    # How the 60 templates' frozen text features are averaged: raw (the reference: the mean of
    # unnormalised features, so templates with larger feature norms weigh more; its published
    # numbers depend on it) | normalized (CLIP's ensembling: normalise each template's feature,
    # average, renormalise; every template weighs the same).
    template_average: str = "raw"


@register_prompt_learner("promptsrc", config=PromptSRCConfig)
class PromptSRC(PromptLearner):
    """Learned: `ctx` `[n, Wt]`, `text_prompts` `[D_t-1, n, Wt]`, `vision_prompts` `[D_v, n_v, Wv]`
    (46,080 parameters for ViT-B/32 at depth 9, 15,360 at depth 3)."""

    # GPA centred on epoch 1 of 2, so the aggregate differs clearly from the last epoch.
    tiny_test_settings = {"depth": 2, "vision_ctx": 2, "n_ctx": 4, "gpa_mean": 1.0}

    def __init__(self, backbone, classnames: list[str], cfg: Any = None):
        super().__init__(backbone, classnames, cfg)
        if self.cfg.template_average not in TEMPLATE_AVERAGES:
            raise ConfigError(f"prompt.template_average={self.cfg.template_average!r}: expected one of "
                              f"{', '.join(TEMPLATE_AVERAGES)}")
        self.text_depth = self.cfg.text_depth if self.cfg.text_depth is not None else self.cfg.depth
        self.vision_depth = self.cfg.vision_depth if self.cfg.vision_depth is not None else self.cfg.depth
        self._check_depth(self.text_depth, backbone.n_text_blocks, "text")
        if self.vision_depth > 0:
            self._check_depth(self.vision_depth, backbone.n_vision_blocks or 0, "vision")
        ctx, self.prompt_prefix, self.n_ctx = self._init_context(
            self.cfg.n_ctx, self.cfg.ctx_init, backbone.text_width)
        self.ctx = nn.Parameter(ctx)
        text_prompts = torch.empty(self.text_depth - 1, self.n_ctx, backbone.text_width)
        vision_prompts = torch.empty(self.vision_depth, self.cfg.vision_ctx, backbone.vision_width or 0)
        nn.init.normal_(text_prompts, std=self.cfg.init_std)
        nn.init.normal_(vision_prompts, std=self.cfg.init_std)
        self.text_prompts = nn.Parameter(text_prompts)
        self.vision_prompts = nn.Parameter(vision_prompts)
        self._finish_init(classnames)

    def prompt_aggregation(self) -> Optional[tuple[float, float]]:
        if self.cfg.gpa_mean is None:
            return None
        return self.cfg.gpa_mean, self.cfg.gpa_std

    def _build_class_buffers(self) -> None:
        self._register_prompt_tokens(self.prompt_prefix, self.n_ctx)
        self._set_buffer("fixed_embeddings", self._frozen_text_features(
            PROMPTSRC_TEMPLATES, normalize_each=self.cfg.template_average == "normalized"))

    def encode_class_text(self, class_indices: Optional[Tensor]) -> Tensor:
        hook = deep_text_hook(self.text_prompts.unbind(0))
        return self._encode_prompts(self._assemble(self.ctx, class_indices), hook=hook)

    def encode_images(self, images: Tensor) -> Tensor:
        if self.vision_depth == 0:
            return self.backbone.encode_image(images)
        hook = deep_vision_hook(self.vision_prompts.unbind(0), self._vision_pre_norm)
        return self.backbone.encode_image_blocks(images, hook=hook)

    def forward(self, images: Tensor, class_indices: Optional[Tensor] = None) -> PromptOutput:
        """In training mode `extras` holds the frozen references of the selected classes:
        `zs_text_features` [C_sel, D], `zs_image_features` [B, D] (normalised), `zs_logits`."""
        output = super().forward(images, class_indices)
        if self.training:
            output.extras = self.zero_shot_references(images, class_indices)
        return output

    @torch.no_grad()
    def zero_shot_references(self, images: Tensor, class_indices: Optional[Tensor] = None) -> dict[str, Tensor]:
        fixed = self.fixed_embeddings
        if class_indices is not None:
            fixed = fixed[class_indices.to(fixed.device)]
        image = self.backbone.encode_image(images)
        with fp32(image):
            text = F.normalize(fixed.float(), dim=-1)
            image = F.normalize(image.float(), dim=-1)
            logits = self.logit_scale() * image @ text.t()
        return {"zs_text_features": text, "zs_image_features": image, "zs_logits": logits}

    def regularization_loss(self, output: PromptOutput) -> tuple[Tensor, dict[str, Tensor]]:
        """L_SCL on the classes `output` was computed for; needs a training-mode forward."""
        if "zs_logits" not in output.extras:
            raise ValueError("PromptSRC.regularization_loss needs the zero-shot references that "
                             "forward() adds in training mode (call learner.train() first)")
        cfg, ex = self.cfg, output.extras
        with fp32(output.logits):
            text = F.l1_loss(output.text_features.float(), ex["zs_text_features"]) * cfg.scl_text_weight
            image = F.l1_loss(output.image_features.float(), ex["zs_image_features"]) * cfg.scl_image_weight
            kl = F.kl_div(F.log_softmax(output.logits.float(), dim=-1),
                          F.log_softmax(ex["zs_logits"].float(), dim=-1),
                          reduction="sum", log_target=True) / output.logits.numel()
            logits = kl * cfg.scl_logits_weight
        total = text + image + logits
        return total, {"scl_text": text.detach(), "scl_image": image.detach(), "scl_logits": logits.detach()}
