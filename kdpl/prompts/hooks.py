"""Block hooks that insert deep prompts into the frozen towers (spec kdpl.md §1.3-1.5).

The backbone calls `hook(i, x)` before block i with batch-first tokens `x[N, L, W]`.
Text: SOT at 0, the context at 1..n (already in the input embeddings for block 0), so deep text
prompts *replace* tokens 1..n before blocks 1..depth-1. Vision: CLS at 0, then patches; prompts
are *appended* before block 0 and replace the last n tokens before blocks 1..depth-1.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from clipcore.backbone import Hook


def deep_text_hook(prompts: Sequence[Tensor]) -> Hook:
    """`prompts[i - 1]` (`[n, W]`) replaces text tokens 1..n before block i, i = 1..len(prompts)."""

    def hook(i: int, x: Tensor) -> Tensor:
        if i == 0 or i > len(prompts):
            return x
        p = prompts[i - 1]
        n = p.shape[0]
        p = p.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
        return torch.cat([x[:, :1], p, x[:, 1 + n:]], dim=1)

    # It edits only the first 1 + n tokens: a shared prompt prefix that long may be encoded once.
    hook.edits_tokens = 1 + max((p.shape[0] for p in prompts), default=0)
    return hook


def deep_vision_hook(prompts: Sequence[Tensor], pre_norm: Callable[[Tensor], Tensor]) -> Hook:
    """`prompts[0]` (`[n, Wv]`) is appended before block 0 (through `pre_norm`, the stem's
    LayerNorm the reference applies after appending), `prompts[i]` replaces the last n tokens
    before block i, i = 1..len(prompts)-1. Zero-length prompts leave the tower untouched."""

    def hook(i: int, x: Tensor) -> Tensor:
        if i >= len(prompts) or prompts[i].shape[0] == 0:
            return x
        p = prompts[i].to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
        if i == 0:
            return torch.cat([x, pre_norm(p).to(x.dtype)], dim=1)
        return torch.cat([x[:, : -p.shape[1]], p], dim=1)

    return hook
