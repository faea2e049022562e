"""Frozen towers' matmul weights held in the compute dtype for the training step.

Under bf16 autocast every matmul and convolution casts its fp32 weight to bf16 on each call, and
autocast caches those casts only for weights that require grad: a frozen ViT-H teacher's weights
are re-cast at every step (~3.8 GB of memory traffic at batch 32). Casting them once to bf16 gives
the very same bf16 values (the same rounding), so the step computes exactly what it did.

Only the weights autocast would cast are copied (linear and convolution weights and biases,
attention in-projections, the towers' projection matrices); LayerNorms, embeddings and the
logit scale stay fp32, as autocast uses them. The copies are swapped in (a pointer swap, no copy)
for the forward and backward of each training step and swapped out right after the backward:
evaluation, caches built in fp32 and checkpoints see the fp32 weights. The price is the copies'
memory: half of the frozen towers' fp32 size.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

# The frozen parameters of these modules that autocast's matmuls read.
_MATMUL_PARAMS = {nn.Linear: ("weight", "bias"), nn.Conv2d: ("weight", "bias"),
                  nn.MultiheadAttention: ("in_proj_weight", "in_proj_bias")}
# Bare projection matrices used as `x @ proj` (open_clip's text and image projections).
_PROJECTIONS = ("text_projection", "proj")


def matmul_weights(model: nn.Module) -> list[nn.Parameter]:
    found: dict[int, nn.Parameter] = {}
    for module in model.modules():
        names = next((n for kind, n in _MATMUL_PARAMS.items() if isinstance(module, kind)), ())
        for name in (*names, *_PROJECTIONS):
            param = getattr(module, name, None)
            if isinstance(param, nn.Parameter) and param.dim() >= (1 if name in names else 2):
                found[id(param)] = param
    return [p for p in found.values() if not p.requires_grad and p.is_floating_point()]


class FrozenComputeCopies:
    """Compute-dtype copies of the frozen matmul weights of ``models``, swapped in on demand."""

    def __init__(self, models: Iterable[nn.Module], dtype: torch.dtype):
        self.dtype = dtype
        self._params = [p for model in models for p in matmul_weights(model)]
        self._originals = [p.data for p in self._params]
        self._copies = [p.data.to(dtype) for p in self._params]
        self.active = False

    @property
    def nbytes(self) -> int:
        return sum(c.numel() * c.element_size() for c in self._copies)

    def swap_in(self) -> None:
        for param, copy in zip(self._params, self._copies):
            param.data = copy
        self.active = True

    def swap_out(self) -> None:
        for param, original in zip(self._params, self._originals):
            param.data = original
        self.active = False
