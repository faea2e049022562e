"""`ClipBackbone`: an OpenAI-style open_clip CLIP driven piece by piece.

The text tower runs from token *embeddings* (prompt learners edit them), optionally as a shared
prefix computed once plus per-class suffixes; the vision tower runs block by block with a hook
(deep visual prompts) and per-block attention deltas (LoRA). With `clipcore.attention`, this is
the code that knows open_clip's private structure.
"""
from __future__ import annotations

import copy
import functools
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Optional

import open_clip
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from clipcore.attention import AttentionDeltas, block_with_deltas, prefix_block, prefix_keys_values, suffix_block
from clipcore.encoder import FrozenEncoder
from clipcore.errors import UserError

Hook = Callable[[int, torch.Tensor], torch.Tensor]

TEXT_TOWER_MSG = ("Prompt learning edits the token embeddings of an OpenAI-style text tower "
                   "(token_embedding/positional_embedding/transformer/ln_final/text_projection on the "
                   "CLIP model), which this model does not have. It can still be a teacher "
                   "(teacher.name=...) or be evaluated zero-shot (method=zeroshot).")


class BackboneLoadError(UserError, RuntimeError):
    """Weights could not be found or loaded; the message says how to point at a local copy."""




class ClipBackbone(FrozenEncoder):
    """An OpenAI-style open_clip CLIP with prompt-friendly entry points into both towers."""

    def __init__(self, model: nn.Module, tokenizer, *, name: str, pretrained: Optional[str],
                 model_cfg: dict, open_clip_source: Optional[tuple[str, Optional[str]]] = None):
        missing = [a for a in ("token_embedding", "positional_embedding", "transformer", "ln_final",
                               "text_projection") if not hasattr(model, a)]
        if missing:
            raise BackboneLoadError(f"Model '{name}' ({type(model).__name__}) lacks {missing}. {TEXT_TOWER_MSG}")
        if model.text_pool_type not in ("argmax", "eos"):
            raise BackboneLoadError(f"Text pool type '{model.text_pool_type}' of '{name}' is not supported")
        if not model.transformer.batch_first:
            raise BackboneLoadError(f"Text transformer of '{name}' is not batch-first")
        super().__init__(model, tokenizer, name=name, pretrained=pretrained, model_cfg=model_cfg,
                         open_clip_source=open_clip_source)
        self.text_width = model.token_embedding.embedding_dim
        # The dtype of the text tower's residual stream, as open_clip derives it from its weights
        # when they are built: read once, so that compute-dtype copies of the weights swapped in
        # for a training step (clipcore.compute_dtype) leave the stream in fp32.
        self.text_cast_dtype = model.transformer.get_cast_dtype()
        self.n_text_blocks = len(model.transformer.resblocks)
        visual = model.visual
        self._vision_error = self._vision_layout_error(visual)
        vit = self._vision_error is None
        self.vision_width = visual.conv1.out_channels if vit else None
        self.n_vision_blocks = len(visual.transformer.resblocks) if vit else None

    @staticmethod
    def _vision_layout_error(visual: nn.Module) -> Optional[str]:
        if not isinstance(visual, open_clip.transformer.VisionTransformer):
            return f"vision tower is {type(visual).__name__}, not an open_clip VisionTransformer"
        if getattr(visual, "attn_pool", None) is not None or visual.pool_type != "tok":
            return f"vision pooling ({visual.pool_type}, attentional pool) is not CLS-token pooling"
        if not visual.transformer.batch_first:
            return "vision transformer is not batch-first"
        return None

    def _require_vit(self):
        if self._vision_error is not None:
            raise BackboneLoadError(f"Block-level vision access for '{self.name}' is unsupported: {self._vision_error}")
        return self.model.visual

    @property
    def text_blocks(self) -> nn.ModuleList:
        return self.model.transformer.resblocks

    @property
    def vision_blocks(self) -> nn.ModuleList:
        return self._require_vit().transformer.resblocks

    # ----- text -----
    def eot_index(self, tokens: torch.Tensor) -> torch.Tensor:
        """Position the text tower pools from (argmax id, or first EOS for 'eos' pooling)."""
        if self.model.text_pool_type == "eos":
            return (tokens == self.model.text_eos_id).int().argmax(dim=-1)
        return tokens.argmax(dim=-1)

    def token_embedding(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token embeddings `[N, L, W]`, without positional embedding."""
        return self.model.token_embedding(tokens)

    def encode_text_embeddings(self, embeddings: torch.Tensor, eot_index: torch.Tensor, *,
                               hook: Optional[Hook] = None, truncate: bool = True,
                               normalize: bool = False, deltas: Optional[AttentionDeltas] = None) -> torch.Tensor:
        """Text features from token embeddings `[N, L, W]` pooled at `eot_index` `[N]`.

        `hook(i, x)` runs before text block i and returns the (possibly edited) `x`. With a causal
        mask, tokens after the last EOT cannot influence the pooled ones, so `truncate` drops them
        (exact, and much cheaper for short prompts).
        """
        m = self.model
        cast_dtype = self.text_cast_dtype
        eot_index = eot_index.to(embeddings.device).long()
        length = embeddings.shape[1]
        if truncate and m.attn_mask is not None:
            length = int(eot_index.max()) + 1
        x = embeddings[:, :length].to(cast_dtype) + m.positional_embedding[:length].to(cast_dtype)
        for i, block in enumerate(m.transformer.resblocks):
            if hook is not None:
                x = hook(i, x)
            x = self._run_block(m.transformer, block, x, self._text_mask(x.shape[1]), deltas, i)
        x = m.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot_index]
        x = self._project(x, m.text_projection)
        return F.normalize(x, dim=-1) if normalize else x

    @property
    def causal_text(self) -> bool:
        """Whether the text tower is causal, which is what makes a shared prefix exact."""
        return self.model.attn_mask is not None

    def encode_text_prefix(self, embeddings: torch.Tensor, *, hook: Optional[Hook] = None) -> "TextPrefix":
        """Run the first ``p`` token embeddings `[G, p, W]` that prompts share (G groups: one, or
        one per image for image-conditioned context) through every text block once.

        `hook(i, x)` is applied to the prefix only, so it may edit only its first p tokens (deep
        text prompts replace tokens 1..n, inside the prefix). Under the causal mask these
        positions never see later tokens, so this equals their states in any full prompt.
        """
        if not self.causal_text:
            raise ValueError(f"the text tower of '{self.name}' is not causal: a shared prefix is not exact")
        m = self.model
        cast_dtype = self.text_cast_dtype
        length = embeddings.shape[1]
        x = embeddings.to(cast_dtype) + m.positional_embedding[:length].to(cast_dtype)
        mask = self._text_mask(length)
        keys, values = [], []
        last = len(m.transformer.resblocks) - 1
        for i, block in enumerate(m.transformer.resblocks):
            if hook is not None:
                x = hook(i, x)
            if i == last:  # the prefix is never pooled: its last block is needed as keys/values only
                k, v = prefix_keys_values(block, x)
            elif m.transformer.grad_checkpointing and torch.is_grad_enabled():
                x, k, v = checkpoint(prefix_block, block, x, mask, use_reentrant=False)
            else:
                x, k, v = prefix_block(block, x, mask)
            keys.append(k)
            values.append(v)
        return TextPrefix(length, keys, values)

    def encode_text_suffix(self, prefix: "TextPrefix", embeddings: torch.Tensor,
                           group: Optional[torch.Tensor] = None, pool: Optional[torch.Tensor] = None, *,
                           normalize: bool = False) -> torch.Tensor:
        """Text features `[N, D]` of prompts made of a prefix encoded by `encode_text_prefix` and
        their own token embeddings `[N, s, W]` (positions p..p+s-1), each pooled at ``pool`` `[N]`
        (its EOT, counted from the end of the prefix; None: the last token). ``group`` `[N]` names
        each row's prefix group (None: group 0 for all rows)."""
        m = self.model
        cast_dtype = self.text_cast_dtype
        start, length = prefix.length, prefix.length + embeddings.shape[1]
        x = embeddings.to(cast_dtype) + m.positional_embedding[start:length].to(cast_dtype)
        mask = self._text_mask(length)[start:length]
        for block, keys, values in zip(m.transformer.resblocks, prefix.keys, prefix.values):
            keys, values = prefix.rows(keys, group, x.shape[0]), prefix.rows(values, group, x.shape[0])
            if m.transformer.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(suffix_block, block, x, keys, values, mask, use_reentrant=False)
            else:
                x = suffix_block(block, x, keys, values, mask)
        x = x[:, -1] if pool is None else x[torch.arange(x.shape[0], device=x.device), pool.to(x.device).long()]
        x = self._project(m.ln_final(x), m.text_projection)
        return F.normalize(x, dim=-1) if normalize else x

    def _text_mask(self, length: int) -> Optional[torch.Tensor]:
        mask = self.model.attn_mask
        if mask is None:
            return None
        if length > mask.shape[0]:
            raise ValueError(f"Text sequence of {length} tokens exceeds the causal mask ({mask.shape[0]})")
        return mask[:length, :length]

    # ----- vision -----
    def encode_image_blocks(self, images: torch.Tensor, *, hook: Optional[Hook] = None,
                            grad_from_block: Optional[int] = None, normalize: bool = False,
                            deltas: Optional[AttentionDeltas] = None) -> torch.Tensor:
        """Image features computed block by block; equals `encode_image` without a hook.

        `hook(i, x[B, L, W])` runs before vision block i and may append or replace tokens (CLS is
        token 0 and is what gets pooled). Everything before block `grad_from_block` (stem, hooks
        and blocks with a smaller index) runs under `torch.no_grad()`, saving activation memory
        when only the last blocks are trained.
        """
        visual = self._require_vit()
        start = grad_from_block or 0
        with torch.no_grad() if start > 0 else nullcontext():
            x = visual.conv1(images.to(visual.conv1.weight.dtype))  # [B, W, grid, grid]
            x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
            cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
            x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
            x = visual.ln_pre(visual.patch_dropout(x))
        for i, block in enumerate(visual.transformer.resblocks):
            with torch.no_grad() if i < start else nullcontext():
                if hook is not None:
                    x = hook(i, x)
                x = self._run_block(visual.transformer, block, x, None, deltas, i)
        # LayerNorm is per token, so ln_post on CLS alone equals ln_post over all tokens then CLS
        # (covers both final_ln_after_pool settings).
        x = self._project(visual.ln_post(x[:, 0]), visual.proj)
        return F.normalize(x, dim=-1) if normalize else x

    # ----- helpers -----
    @staticmethod
    def _run_block(transformer: nn.Module, block: nn.Module, x: torch.Tensor, mask: Optional[torch.Tensor],
                   deltas: Optional[AttentionDeltas] = None, index: int = -1) -> torch.Tensor:
        run = block if deltas is None or not deltas.applies_to(index) else functools.partial(
            block_with_deltas, block, deltas=deltas, index=index)
        if transformer.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(run, x, None, None, mask, use_reentrant=False)
        return run(x, attn_mask=mask)

    @staticmethod
    def _project(x: torch.Tensor, projection) -> torch.Tensor:
        if projection is None:
            return x
        if isinstance(projection, nn.Linear):
            return projection(x)
        return x @ projection

    # ----- freezing -----
    def vision_pre_norm(self, tokens: torch.Tensor) -> torch.Tensor:
        """``ln_pre`` of the vision tower: tokens inserted by a hook after the embedding step
        (VPT, PromptSRC input prompts) must pass through it to match prompts added before it."""
        return self._require_vit().ln_pre(tokens)

    def attention_blocks(self, tower: str) -> nn.ModuleList:
        """The residual attention blocks of ``tower`` (``text`` or ``vision``)."""
        if tower == "text":
            return self.text_blocks
        if tower == "vision":
            return self.vision_blocks
        raise ValueError(f"tower must be 'text' or 'vision', got {tower!r}")

    @torch.no_grad()
    def merged_copy(self, changes: dict[tuple[str, int, str], torch.Tensor]) -> nn.Module:
        """A copy of the open_clip model with weight changes ``{(tower, block, q|k|v|o): [E, E]}``
        added to the attention projections (a plain open_clip model: no deltas needed)."""
        model = copy.deepcopy(self.model)
        merged = ClipBackbone(model, self.tokenizer, name=self.name, pretrained=self.pretrained,
                              model_cfg=self.model_cfg)
        for (tower, index, which), change in changes.items():
            attn = merged.attention_blocks(tower)[index].attn
            if which == "o":
                attn.out_proj.weight += change.to(attn.out_proj.weight)
            else:
                part, width = "qkv".index(which), attn.embed_dim
                attn.in_proj_weight[part * width:(part + 1) * width] += change.to(attn.in_proj_weight)
        return model

    def unfreeze_last_vision_blocks(self, n: int) -> "ClipBackbone":
        """Turn gradients on for the last `n` vision blocks only (not ln_post/proj, as SimGCD does)."""
        blocks = self.vision_blocks
        if not 0 <= n <= len(blocks):
            raise ValueError(f"n must be in [0, {len(blocks)}], got {n}")
        for block in list(blocks)[len(blocks) - n:]:
            for p in block.parameters():
                p.requires_grad_(True)
        return self


@dataclass
class TextPrefix:
    """A shared prompt prefix after `ClipBackbone.encode_text_prefix`: its length and its keys
    and values in every text block (`[G, heads, p, head_width]`)."""

    length: int
    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @staticmethod
    def rows(cached: torch.Tensor, group: Optional[torch.Tensor], n_rows: int) -> torch.Tensor:
        """The cached tensor of each of ``n_rows`` prompts (a broadcast view for one group)."""
        if group is None:
            return cached.expand(n_rows, -1, -1, -1)
        return cached[group.to(cached.device)]
