"""open_clip's residual attention block written out, for the two ways `ClipBackbone` runs it
besides the block's own forward. Part of the backbone wrapper: with `clipcore.backbone`, the
only code that knows open_clip's block internals.

* `block_with_deltas`: additive changes to the q/k/v/out projections (CLIP-LoRA).
* `prefix_block` / `suffix_block`: a causal text tower run on prompts that share their first
  ``p`` tokens. Under the causal mask those positions see only each other, so their hidden
  states (and their keys and values in every block) are the same for every prompt: they are
  computed once (`prefix_block`, which also returns them), and each prompt's own tokens
  (`suffix_block`) attend to the cached prefix keys/values and to their own causal past.

Each equals ``block(x, attn_mask=mask)`` on the corresponding positions (to float rounding).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class AttentionDeltas:
    """Additive low-rank changes to a tower's attention projections (CLIP-LoRA), given to
    `encode_text_embeddings` / `encode_image_blocks` as ``deltas``.

    ``applies_to(i)`` says whether block i is changed; ``delta(i, which, x)`` returns the change
    of projection ``which`` (``q``, ``k``, ``v``: from the block's normalised input; ``o``: from
    the attention output before ``out_proj``) for input ``x`` ``[B, L, E]``, or None.
    """

    def applies_to(self, index: int) -> bool:
        raise NotImplementedError

    def delta(self, index: int, which: str, x: Tensor) -> Optional[Tensor]:
        raise NotImplementedError


def _projections(block: nn.Module, h: Tensor, deltas: Optional[AttentionDeltas] = None,
                 index: int = -1, which_ones: str = "qkv") -> list[Tensor]:
    """The ``which_ones`` of q, k, v of the normalised input ``h`` `[B, L, E]`, each
    `[B, heads, L, E / heads]`."""
    attn = block.attn
    width, heads = attn.embed_dim, attn.num_heads
    out = []
    for part, which in enumerate("qkv"):
        if which not in which_ones:
            continue
        weight = attn.in_proj_weight[part * width:(part + 1) * width]
        bias = attn.in_proj_bias[part * width:(part + 1) * width] if attn.in_proj_bias is not None else None
        y = F.linear(h, weight, bias)
        change = deltas.delta(index, which, h) if deltas is not None else None
        y = y if change is None else y + change
        out.append(y.view(h.shape[0], h.shape[1], heads, width // heads).transpose(1, 2))
    return out


def _attend(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor]) -> Tensor:
    """Attention output `[B, Lq, E]` (heads merged), before ``out_proj``."""
    mask = mask.to(q.dtype) if mask is not None else None
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)


def _finish(block: nn.Module, x: Tensor, attended: Tensor, change: Optional[Tensor] = None) -> Tensor:
    """Output projection, residuals, LayerScale and MLP, as `ResidualAttentionBlock.forward`."""
    projected = block.attn.out_proj(attended)
    x = x + block.ls_1(projected if change is None else projected + change)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def block_with_deltas(block: nn.Module, x: Tensor, k_x=None, v_x=None, attn_mask=None, *,
                      deltas: AttentionDeltas, index: int) -> Tensor:
    """open_clip's `ResidualAttentionBlock.forward` whose q/k/v/out projections take additive
    deltas (equal to the block when every delta is None)."""
    q, k, v = _projections(block, block.ln_1(x), deltas, index)
    attended = _attend(q, k, v, attn_mask)
    return _finish(block, x, attended, deltas.delta(index, "o", attended))


def prefix_block(block: nn.Module, x: Tensor, mask: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """The block on the shared prefix ``x`` `[G, p, E]` (``mask``: the causal mask's `[p, p]`
    corner): its output and the prefix's keys and values `[G, heads, p, E / heads]`."""
    q, k, v = _projections(block, block.ln_1(x))
    return _finish(block, x, _attend(q, k, v, mask)), k, v


def prefix_keys_values(block: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """Only the keys and values of the prefix in ``block``: what the last block needs of it
    (the prefix's own outputs of the last block are never pooled)."""
    k, v = _projections(block, block.ln_1(x), which_ones="kv")
    return k, v


def suffix_block(block: nn.Module, x: Tensor, prefix_keys: Tensor, prefix_values: Tensor,
                 mask: Optional[Tensor]) -> Tensor:
    """The block on prompt tokens ``x`` `[N, s, E]` that follow a prefix whose keys/values
    (`[N, heads, p, E / heads]`, one row per prompt) were cached by `prefix_block`; ``mask`` is
    the causal mask's rows p..p+s-1 over columns 0..p+s-1."""
    q, k, v = _projections(block, block.ln_1(x))
    keys, values = torch.cat([prefix_keys, k], dim=2), torch.cat([prefix_values, v], dim=2)
    return _finish(block, x, _attend(q, keys, values, mask))
