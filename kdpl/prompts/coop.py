"""CoOp: learned text context shared by all classes, or one per class (spec kdpl.md §1.1).

Prompt = [SOT][ctx_1..n][classname][.][EOT] (class token "end"; "middle"/"front" move the
class name into / before the context). Initialised from "a photo of a" the student *is*
zero-shot CLIP with "a photo of a {c}." (invariant 9). The image tower is not prompted.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from torch import Tensor, nn

from clipcore.config import ConfigError
from kdpl.prompts.base import PromptLearner
from kdpl.prompts.config import ContextConfig
from kdpl.prompts.registry import register_prompt_learner

POSITIONS = ("end", "middle", "front")


@dataclass
class CoOpConfig(ContextConfig):
    # end | middle | front: where the class name goes relative to the context.
    class_token_position: str = "end"
    # CSC: one context per class (tied to its class list).
    class_specific: bool = False


@register_prompt_learner("coop", config=CoOpConfig)
class CoOp(PromptLearner):
    """`ctx` is `[n_ctx, W]`, or `[C, n_ctx, W]` with `class_specific` (CSC).

    A CSC context is tied to its class list: `set_classnames` accepts only a list of the same
    length, and its `learned_state` does not transfer to other datasets.
    """

    text_only = True

    def __init__(self, backbone, classnames: list[str], cfg: Any = None):
        super().__init__(backbone, classnames, cfg)
        if self.cfg.class_token_position not in POSITIONS:
            raise ConfigError(f"class_token_position must be one of {POSITIONS}, "
                             f"got '{self.cfg.class_token_position}'")
        leading = (len(classnames),) if self.cfg.class_specific else ()
        ctx, self.prompt_prefix, self.n_ctx = self._init_context(
            self.cfg.n_ctx, self.cfg.ctx_init, backbone.text_width, leading)
        self.ctx = nn.Parameter(ctx)
        self._finish_init(classnames)

    def set_classnames(self, classnames: list[str]) -> None:
        if self.cfg.class_specific and len(classnames) != self.ctx.shape[0]:
            raise ConfigError(f"class-specific CoOp context was learned for {self.ctx.shape[0]} classes; "
                             f"cannot switch to a list of {len(classnames)}")
        super().set_classnames(classnames)

    def _build_class_buffers(self) -> None:
        self._register_prompt_tokens(self.prompt_prefix, self.n_ctx, self.cfg.class_token_position,
                                     shared_context=not self.cfg.class_specific)

    def encode_class_text(self, class_indices: Optional[Tensor]) -> Tensor:
        ctx = self.ctx
        if self.cfg.class_specific and class_indices is not None:
            ctx = ctx[class_indices.to(ctx.device)]
        return self._encode_prompts(self._assemble(ctx, class_indices))
