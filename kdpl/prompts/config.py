"""Config fields shared by prompt learners (light: each learner's own config class extends these,
and configs are validated before torch is imported; see ``clipcore.declarations``).

Precision is not a field: learned tensors are fp32 and the caller chooses the autocast.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class LearnerConfig:
    """Fields every learner reads."""

    # Prompts per text-tower call when encoding many at once (a 20k-class dictionary).
    text_chunk_size: int = 1024
    # Standard deviation of randomly initialised prompt tokens.
    init_std: float = 0.02


@dataclass
class ContextConfig(LearnerConfig):
    """A learned text context of ``n_ctx`` tokens, initialised from the words of ``ctx_init``
    (None: N(0, init_std) and the prompt text "X X ... X"). ``n_ctx`` None: the phrase's length."""

    n_ctx: Optional[int] = None
    ctx_init: Optional[str] = "a photo of a"
