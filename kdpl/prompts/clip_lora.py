"""CLIP-LoRA: low-rank adapters in the attention of both towers instead of prompts.

Zanella, Ben Ayed, "Low-Rank Few-Shot Adaptation of Vision-Language Models", CVPRW 2024;
reference: MaxZanella/CLIP-LoRA (``loralib/layers.py``, ``loralib/utils.py``, ``lora.py``,
``run_utils.py``). For every adapted block the query, key and value projections
(``params: qkv``; ``o`` adds the output projection) become ``W x + s * B A dropout(x)`` with
rank ``r = 2``, ``s = alpha / sqrt(r)`` (alpha 1; the reference's scaling, not LoRA's alpha/r),
dropout 0.25 on the branch's input in training, ``A`` Kaiming-uniform (a = sqrt 5) and ``B``
zero, so the untrained learner is the frozen model. Every block of both towers is adapted
(``encoder: both``, ``blocks: null``; the reference's ``position`` names are block lists of a
12-block tower: ``up`` = [8, 9, 10, 11], ``half-up`` = [6..11], ``bottom`` = [0..3] ...). Classes
are prompted with the dataset's template (``template: null``), as the reference does.

The frozen weights are never touched: the factors are this learner's only tensors, and the
backbone applies them as additive deltas (``clipcore.attention.AttentionDeltas``).
``weight_changes()`` gives ``s * B A`` per projection, which ``clipdistill export --merged``
adds to a copy of the model to write a plain open_clip bundle.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clipcore.attention import AttentionDeltas
from clipcore.config import ConfigError
from clipcore.templates import fill
from kdpl.prompts.base import PromptLearner
from kdpl.prompts.config import LearnerConfig
from kdpl.prompts.registry import register_prompt_learner

ENCODERS = ("both", "text", "vision")
PROJECTIONS = "qkvo"


@dataclass
class CLIPLoRAConfig(LearnerConfig):
    # Rank r of every factor pair, and alpha (the branch is scaled by alpha / sqrt(r)).
    rank: int = 2
    alpha: float = 1.0
    # Dropout on the input of the low-rank branch, in training.
    dropout: float = 0.25
    # both | text | vision: the towers that get adapters.
    encoder: str = "both"
    # Indices of the adapted blocks in each adapted tower; None: all of them.
    blocks: Optional[list] = None
    # Which attention projections: letters of q, k, v, o.
    params: str = "qkv"
    # The classes' prompt template; None: the dataset's.
    template: Optional[str] = None


class _TowerFactors(AttentionDeltas):
    """The factors of one tower, as the deltas the backbone applies."""

    def __init__(self, learner: "CLIPLoRA", tower: str, blocks: list[int]):
        self.learner, self.tower, self.blocks = learner, tower, set(blocks)

    def applies_to(self, index: int) -> bool:
        return index in self.blocks

    def delta(self, index: int, which: str, x: Tensor) -> Optional[Tensor]:
        learner = self.learner
        if which not in learner.cfg.params:
            return None
        a, b = learner.factor(self.tower, index, which)
        if learner.training and learner.cfg.dropout > 0:
            x = F.dropout(x, learner.cfg.dropout, training=True)
        # The reference's form: x (B A)^T * scaling.
        return F.linear(x, (b @ a).to(x.dtype)) * learner.scaling


@register_prompt_learner("clip_lora", config=CLIPLoRAConfig)
class CLIPLoRA(PromptLearner):
    """Learned: `factors[<tower>_<block>_<proj>_A]` `[r, E]` and `..._B` `[E, r]` (ViT-B/16, both
    towers, all 12 blocks, q/k/v, r = 2: 184,320 numbers)."""

    tiny_test_settings = {"rank": 2}

    def __init__(self, backbone, classnames: list[str], cfg: Any = None):
        super().__init__(backbone, classnames, cfg)
        c = self.cfg
        if c.encoder not in ENCODERS:
            raise ConfigError(f"prompt.encoder={c.encoder!r}: expected one of {', '.join(ENCODERS)}")
        if not c.params or set(c.params) - set(PROJECTIONS):
            raise ConfigError(f"prompt.params={c.params!r}: expected letters of {PROJECTIONS!r} (e.g. 'qkv')")
        if c.rank < 1:
            raise ConfigError(f"prompt.rank={c.rank}: expected >= 1")
        self.scaling = c.alpha / math.sqrt(c.rank)
        self.factors = nn.ParameterDict()
        self.deltas: dict[str, _TowerFactors] = {}
        for tower in ("text", "vision") if c.encoder == "both" else (c.encoder,):
            blocks = self._tower_blocks(tower)
            width = backbone.text_width if tower == "text" else backbone.vision_width
            for index in blocks:
                for which in c.params:
                    a = torch.empty(c.rank, width)
                    nn.init.kaiming_uniform_(a, a=math.sqrt(5))
                    self.factors[f"{tower}_{index}_{which}_A"] = nn.Parameter(a)
                    self.factors[f"{tower}_{index}_{which}_B"] = nn.Parameter(torch.zeros(width, c.rank))
            self.deltas[tower] = _TowerFactors(self, tower, blocks)
        self._finish_init(classnames)

    def _tower_blocks(self, tower: str) -> list[int]:
        count = len(self.backbone.attention_blocks(tower))
        blocks = list(range(count)) if self.cfg.blocks is None else [int(i) for i in self.cfg.blocks]
        outside = [i for i in blocks if not 0 <= i < count]
        if outside:
            raise ConfigError(f"prompt.blocks={self.cfg.blocks}: the {tower} tower of '{self.backbone.name}' "
                              f"has blocks 0..{count - 1}")
        return blocks

    def factor(self, tower: str, index: int, which: str) -> tuple[Tensor, Tensor]:
        key = f"{tower}_{index}_{which}"
        return self.factors[f"{key}_A"], self.factors[f"{key}_B"]

    def _build_class_buffers(self) -> None:
        template = self.cfg.template or "a photo of a {}."
        tokens = self.backbone.tokenize([fill(template, c) for c in self.classnames])
        # The adapted text tower runs padded prompts (`_encode_text_chunks`): no shared prefix.
        self._register_tokens(tokens, shared_prefix=0)

    def encode_class_text(self, class_indices: Optional[Tensor]) -> Tensor:
        tokens, eot = self._selected_tokens(class_indices)
        deltas = self.deltas.get("text")
        if deltas is None:  # frozen text tower: no graph
            with torch.no_grad():
                return self._encode_text_chunks(self._embed(tokens), eot)
        return self._encode_text_chunks(self._embed(tokens), eot, deltas=deltas)

    def encode_images(self, images: Tensor) -> Tensor:
        deltas = self.deltas.get("vision")
        if deltas is None:
            return self.backbone.encode_image(images)
        return self.backbone.encode_image_blocks(images, deltas=deltas)

    @torch.no_grad()
    def weight_changes(self) -> dict[tuple[str, int, str], Tensor]:
        """``{(tower, block, projection): s * B A}``: what merging adds to each frozen weight."""
        return {(tower, index, which): (self.factor(tower, index, which)[1] @ self.factor(tower, index, which)[0])
                * self.scaling
                for tower, deltas in self.deltas.items() for index in sorted(deltas.blocks)
                for which in self.cfg.params}
