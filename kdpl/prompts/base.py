"""Shared machinery of the prompt learners (spec kdpl.md §1).

A prompt learner owns only what it learns (context vectors, meta-net, deep prompts,
projections); the frozen `ClipBackbone` is held by reference and deliberately *not* registered
as a submodule, so `learner.parameters()`, `learner.state_dict()` and an optimizer built on the
learner see nothing else. The caller (the LightningModule) registers and moves the backbone.

Class-list dependent tensors (token ids, EOT positions, fixed text features) are
non-persistent buffers rebuilt by `set_classnames`, which is how learned prompts transfer to
novel classes or other datasets (the reference drops `token_prefix/suffix` when loading).

Prompt embeddings are never materialised for the whole class list: `forward` indexes the token
ids of the selected classes, embeds only those (a frozen lookup) (spec §6 "index prefix/suffix
first") and runs the text tower at its floor: prompts grouped by length, each running only up to
its own EOT, and the prefix they all share (SOT, a shared context) encoded once
(`_encode_prompts`). What that needs is computed on the host when the class list is set, so the
step never waits for the device, except to read the lengths of a per-step class selection.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clipcore.classnames import readable_classname
from clipcore.config import ConfigError
from clipcore.templates import fill
from kdpl.prompts.config import LearnerConfig
from kdpl.prompts.hooks import Hook
from kdpl.prompts.layout import PromptLayout, Prompts, common_prefix, length_buckets


@dataclass
class PromptOutput:
    """Result of a learner's forward.

    `logits` [B, C_sel] fp32 = exp(logit_scale)·ĩ·t̃ᵀ; `image_features` [B, D] and
    `text_features` ([C_sel, D], or [B, C_sel, D] for CoCoOp) are L2-normalised fp32.
    `extras` carries learner-specific tensors (PromptSRC's zero-shot references).
    """

    logits: Tensor
    image_features: Tensor
    text_features: Tensor
    extras: dict[str, Tensor] = field(default_factory=dict)


class PromptLearner(nn.Module):
    """Base class: class-list buffers, class selection, feature normalisation and logits."""

    name: ClassVar[str] = ""
    # The learner's config dataclass (set by register_prompt_learner) and the settings that fit
    # the 2-block test CLIPs (tests parametrize over the registry with them).
    config_class: ClassVar[type] = LearnerConfig
    tiny_test_settings: ClassVar[dict[str, Any]] = {}
    # Cut prompts after the selected classes' longest EOT (exact under the causal mask). False
    # runs all `context_length` tokens, as the reference does (benchmarks/bench_kdpl.py).
    truncate_text: bool = True
    # Encode prompts at the text tower's floor (grouped by length, the shared prefix once; see
    # `_encode_prompts`). False pads every prompt to the longest (benchmarks' "before" row).
    bucket_text: bool = True
    # At most this many length groups: each group is one more pass through the text tower (more
    # kernel launches), so lengths are merged into the groups that pad the fewest tokens.
    max_text_buckets: int = 4
    # The learned prompts change only the text side: the image features are the frozen model's,
    # so the class text features are a fixed linear classifier on plain open_clip image
    # features (`clipdistill export --classes` bakes it). False for image-conditioned (CoCoOp)
    # and visually prompted (VPT, MaPLe, PromptSRC) learners.
    text_only: ClassVar[bool] = False

    def __init__(self, backbone, classnames: list[str], cfg: Any = None):
        super().__init__()
        # Held by reference, not as a submodule: the learner must not own frozen weights.
        object.__setattr__(self, "_backbone", backbone)
        self.cfg = self.make_config(cfg)
        self.classnames: list[str] = []

    @classmethod
    def make_config(cls, cfg: Any = None):
        """``cfg`` (None, a mapping or a config instance) as this learner's config dataclass."""
        if cfg is None:
            return cls.config_class()
        if isinstance(cfg, cls.config_class):
            return cfg
        known = {f.name for f in fields(cls.config_class)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ConfigError(f"{cls.name}: unknown prompt config keys {unknown}; this learner reads "
                              f"{sorted(known)}")
        return cls.config_class(**dict(cfg))

    @property
    def backbone(self):
        return self._backbone

    def prompt_aggregation(self) -> Optional[tuple[float, float]]:
        """``(mean, std)`` of the Gaussian prompt aggregation over epochs, or None (PromptSRC)."""
        return None

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    # ----- class list -----
    def set_classnames(self, classnames: list[str]) -> None:
        """Rebuild every class-dependent buffer for `classnames`; learned tensors are untouched."""
        if len(classnames) == 0:
            raise ValueError("classnames must not be empty")
        self.classnames = [readable_classname(c) for c in classnames]
        self._build_class_buffers()

    def _build_class_buffers(self) -> None:
        """Subclasses register their non-persistent class buffers here."""

    def _finish_init(self, classnames: list[str]) -> None:
        """Called at the end of a subclass constructor: live on the backbone's device, then
        build the class buffers."""
        self.to(self.backbone.logit_scale.device)
        self.set_classnames(classnames)

    def _device(self) -> torch.device:
        for t in self.parameters():
            return t.device
        return self.backbone.logit_scale.device

    def _set_buffer(self, name: str, value: Tensor) -> None:
        self.register_buffer(name, value.to(self._device()), persistent=False)

    def _register_prompt_tokens(self, prefix: str, n_ctx: int = 0, position: str = "end",
                                shared_context: bool = True) -> None:
        """Token ids and EOT positions of "<prefix> <classname>." per class, and for CoOp's
        "middle"/"front" positions the gather map `prompt_index[c, p]`: prompt token p is
        context vector j for `j < n_ctx`, else frozen token `j - n_ctx` of the tokenised prompt.
        `shared_context`: the context is the same for every class (not CoOp's CSC), so the
        positions it fills can belong to the prefix that all prompts share.
        """
        tokens = self.backbone.tokenize([f"{prefix} {c}." for c in self.classnames])
        self._n_prompt_ctx = n_ctx
        self._gather_prompts = n_ctx > 0 and position != "end"
        # What fills each prompt position, to find the prefix all prompts share: a frozen token
        # id (>= 0), or context vector j (-1 - j; made class-dependent when it is per class).
        sources = tokens.clone()
        sources[:, 1:1 + n_ctx] = -1 - torch.arange(n_ctx)
        if self._gather_prompts:
            name_lens = self.backbone.eot_index(self.backbone.tokenize(self.classnames)) - 1
            split = {"middle": n_ctx // 2, "front": 0}[position]
            index = _assembly_index(tokens.shape[1], n_ctx, split, name_lens)
            self._set_buffer("prompt_index", index)
            sources = torch.where(index < n_ctx, -1 - index, tokens.gather(1, (index - n_ctx).clamp_min(0)))
        if not shared_context:
            per_class = n_ctx * (1 + torch.arange(len(tokens))).unsqueeze(1)
            sources = torch.where(sources < 0, sources - per_class, sources)
        self._register_tokens(tokens, common_prefix(sources))

    def _register_tokens(self, tokens: Tensor, shared_prefix: int) -> None:
        """Store the prompts' token ids and EOT positions and, from the CPU copies (so that no
        step has to ask the device), how the text tower encodes them at its floor: prompts
        grouped by length, and the number of leading positions every prompt shares."""
        eot = self.backbone.eot_index(tokens)
        self._set_buffer("prompt_tokens", tokens)
        self._set_buffer("prompt_eot", eot)
        # The EOT must stay outside the shared prefix: every prompt keeps at least one own token.
        self._shared_prefix = min(shared_prefix, int(eot.min()))
        lengths, counts, order = length_buckets(eot, self._shared_prefix, self.max_text_buckets)
        self._set_buffer("prompt_order", order)
        self._set_buffer("prompt_inverse", torch.argsort(order))
        self._static_buckets = (lengths, counts)

    def _prompt_layout(self, class_indices: Optional[Tensor]) -> "PromptLayout":
        """How the prompts of the selected classes are encoded. For the whole class list it was
        computed with the class list; a selection (KDPL-CA's top-K) asks the device once for the
        lengths of the selected prompts."""
        if class_indices is None:
            lengths, counts = self._static_buckets
            return PromptLayout(self._shared_prefix, lengths, counts, self.prompt_order, self.prompt_inverse)
        eot = self.prompt_eot[class_indices.to(self.prompt_eot.device)]
        lengths, counts, order = length_buckets(eot, self._shared_prefix, self.max_text_buckets)
        return PromptLayout(self._shared_prefix, lengths, counts, order, torch.argsort(order))

    def _selected_tokens(self, class_indices: Optional[Tensor],
                         layout: Optional["PromptLayout"] = None) -> tuple[Tensor, Tensor]:
        """Token ids of the selected classes, cut after their last EOT, and the EOT positions."""
        tokens, eot = self.prompt_tokens, self.prompt_eot
        if class_indices is not None:
            class_indices = class_indices.to(tokens.device)
            tokens, eot = tokens[class_indices], eot[class_indices]
        if not self.truncate_text:
            return tokens, eot
        layout = layout or self._prompt_layout(class_indices)
        return tokens[:, : layout.lengths[-1]], eot

    def _assemble(self, ctx: Tensor, class_indices: Optional[Tensor]) -> "Prompts":
        """Prompt embeddings `[*lead, C_sel, L, W]` of the selected classes, their EOT positions
        and layout; `ctx` is `[n, W]` (shared), `[C_sel, n, W]` or `[*lead, 1 | C_sel, n, W]`."""
        layout = self._prompt_layout(class_indices)
        tokens, eot = self._selected_tokens(class_indices, layout)
        emb = self._embed(tokens)  # [C, L, W]
        n_cls, length, width = emb.shape
        n = self._n_prompt_ctx
        lead = ctx.shape[:-3] if ctx.dim() > 2 else ()
        ctx = ctx.to(emb.device).expand(*lead, n_cls, n, width)
        emb = emb.expand(*lead, n_cls, length, width)
        if not self._gather_prompts:  # class token at the end: [SOT][ctx][name . EOT ...]
            return Prompts(torch.cat([emb[..., :1, :], ctx, emb[..., 1 + n:, :]], dim=-2), eot, layout)
        index = self.prompt_index if class_indices is None else self.prompt_index[class_indices.to(tokens.device)]
        index = index[:, :length].to(emb.device)
        rows = torch.arange(n_cls, device=emb.device).unsqueeze(1)
        return Prompts(torch.cat([ctx, emb], dim=-2)[..., rows, index, :], eot, layout)

    def _embed(self, tokens: Tensor) -> Tensor:
        """Frozen token embeddings in fp32 (so they concatenate with fp32 learned context)."""
        weight_device = self.backbone.logit_scale.device
        with torch.no_grad():
            return self.backbone.token_embedding(tokens.to(weight_device)).float()

    # ----- context initialisation -----
    def _init_context(self, n_ctx: Optional[int], ctx_init: Optional[str], width: int,
                      leading: tuple[int, ...] = ()) -> tuple[Tensor, str, int]:
        """Context vectors `[*leading, n_ctx, width]`, the prompt prefix string, and n_ctx.

        With `ctx_init` the vectors are the token embeddings of its first `n_ctx` tokens (all of
        them when `n_ctx` is None) and the prompt text keeps the whole phrase, so MaPLe's
        "a photo" context is followed by "of a {c}." as in the reference. Without it they are
        N(0, init_std) and the phrase is "X X ... X".
        """
        if ctx_init:
            phrase = ctx_init.replace("_", " ").strip()
            tokens = self.backbone.tokenize([phrase])
            n_phrase = int(self.backbone.eot_index(tokens)[0]) - 1
            n_ctx = n_phrase if n_ctx is None else n_ctx
            if not 1 <= n_ctx <= n_phrase:
                raise ConfigError(f"n_ctx={n_ctx} but ctx_init '{phrase}' has {n_phrase} tokens; "
                                 "use n_ctx <= the phrase length or ctx_init=None for random context")
            vectors = self._embed(tokens)[0, 1:1 + n_ctx].clone()
            vectors = vectors.expand(*leading, n_ctx, width).clone()
            return vectors, phrase, n_ctx
        if n_ctx is None or n_ctx < 1:
            raise ConfigError(f"random context needs n_ctx >= 1, got {n_ctx}")
        vectors = torch.empty(*leading, n_ctx, width)
        nn.init.normal_(vectors, std=self.cfg.init_std)
        return vectors, " ".join(["X"] * n_ctx), n_ctx

    # ----- encoders -----
    def _encode_prompts(self, prompts: "Prompts", hook: Optional[Hook] = None) -> Tensor:
        """Unnormalised text features `[*lead, C_sel, D]` of assembled prompts.

        At the floor (``bucket_text``, a causal tower, and a hook, if any, that edits only tokens
        of the shared prefix): the prefix every prompt shares is encoded once per lead group, and
        each group of prompts of similar length (at most ``max_text_buckets`` groups) runs only
        its own tokens, attending to the cached prefix, each pooled at its own EOT. Otherwise every
        prompt is padded to the longest. Both give the same features.
        """
        emb, layout = prompts.embeddings, prompts.layout
        *lead, n_cls, length, width = emb.shape
        edits = getattr(hook, "edits_tokens", None) if hook is not None else 0
        at_floor = (self.bucket_text and self.truncate_text and self.backbone.causal_text
                    and edits is not None and 1 <= layout.prefix and edits <= layout.prefix)
        if not at_floor:
            flat = emb.reshape(-1, length, width)
            eot = prompts.eot.repeat(flat.shape[0] // n_cls)
            return self._encode_text_chunks(flat, eot, hook=hook).view(*lead, n_cls, -1)
        groups = emb.reshape(-1, n_cls, length, width)
        n_groups, p = groups.shape[0], layout.prefix
        prefix = self.backbone.encode_text_prefix(groups[:, 0, :p], hook=hook)
        size, feats, start = max(1, self.cfg.text_chunk_size), [], 0
        for bucket_length, count in zip(layout.lengths, layout.counts):
            rows = layout.order[start:start + count].to(emb.device)
            start += count
            own = groups[:, rows, p:bucket_length].reshape(n_groups * count, bucket_length - p, width)
            group = torch.arange(n_groups, device=emb.device).repeat_interleave(count) if n_groups > 1 else None
            pool = (prompts.eot.to(emb.device)[rows] - p).repeat(n_groups)  # each row's own EOT
            chunks = [self.backbone.encode_text_suffix(
                prefix, own[i:i + size], None if group is None else group[i:i + size], pool[i:i + size])
                for i in range(0, own.shape[0], size)]
            feats.append(torch.cat(chunks).view(n_groups, count, -1))
        feats = torch.cat(feats, dim=1)[:, layout.inverse.to(emb.device)]
        return feats.view(*lead, n_cls, -1)

    def _encode_text_chunks(self, embeddings: Tensor, eot: Tensor, hook: Optional[Hook] = None,
                            deltas=None) -> Tensor:
        """Unnormalised text features of many prompts, every one padded to the longest (the
        caller has cut them after the longest EOT, or not, as ``truncate_text`` says), in calls
        of `text_chunk_size` prompts (`deltas`: changes to the attention projections, see
        `clipcore.attention.AttentionDeltas`)."""
        size = max(1, self.cfg.text_chunk_size)
        # Already cut: the backbone need not ask the device for the longest EOT again.
        return torch.cat([
            self.backbone.encode_text_embeddings(e, i, hook=hook, truncate=False, deltas=deltas)
            for e, i in zip(embeddings.split(size), eot.split(size))
        ])

    @torch.no_grad()
    def _frozen_text_features(self, templates: Sequence[str], normalize_each: bool = False) -> Tensor:
        """Zero-shot text features `[C, D]` (fp32) averaged over `templates`: the mean of the
        unnormalised features, or with `normalize_each` the renormalised mean of the normalised
        ones (CLIP's prompt ensembling).

        All template × class prompts go through the text tower in chunks of `text_chunk_size`,
        each cut after its longest EOT; per-class sums are accumulated, so memory stays
        O(C·D) even for a 20k-class dictionary × 60 templates.
        """
        n_cls, chunk = len(self.classnames), max(1, self.cfg.text_chunk_size)
        total = len(templates) * n_cls
        sums = None
        with fp32(self.backbone.logit_scale):  # a cache: computed in fp32 whatever the caller's autocast
            for start in range(0, total, chunk):
                flat = range(start, min(total, start + chunk))
                texts = [fill(templates[k // n_cls], self.classnames[k % n_cls]) for k in flat]
                tokens = self.backbone.tokenize(texts)
                eot = self.backbone.eot_index(tokens)
                # Cut after the longest EOT here, on the host copy of the token ids.
                feats = self.backbone.encode_text_embeddings(
                    self._embed(tokens[:, : int(eot.max()) + 1]), eot, truncate=False).float()
                if normalize_each:
                    feats = F.normalize(feats, dim=-1)
                if sums is None:
                    sums = feats.new_zeros(n_cls, feats.shape[1])
                sums.index_add_(0, torch.tensor([k % n_cls for k in flat], device=feats.device), feats)
        mean = sums / len(templates)
        return F.normalize(mean, dim=-1) if normalize_each else mean

    def _vision_pre_norm(self, tokens: Tensor) -> Tensor:
        """The vision stem's LayerNorm applied to prompt tokens.

        The reference appends input-level visual prompts *before* `ln_pre`; the backbone's block
        hook runs after it, and LayerNorm is per token, so normalising the prompts here is exact.
        """
        return self.backbone.vision_pre_norm(tokens)

    def encode_images(self, images: Tensor) -> Tensor:
        """Unnormalised image features; prompted learners override."""
        return self.backbone.encode_image(images)

    def encode_class_text(self, class_indices: Optional[Tensor]) -> Tensor:
        """Unnormalised text features `[C_sel, D]` of the (selected) classes."""
        raise NotImplementedError

    def forward(self, images: Tensor, class_indices: Optional[Tensor] = None) -> PromptOutput:
        image_features = self.encode_images(images)
        text_features = self.encode_class_text(class_indices)
        with fp32(image_features):
            image_features = F.normalize(image_features.float(), dim=-1)
            text_features = F.normalize(text_features.float(), dim=-1)
            logits = self.logit_scale() * image_features @ text_features.t()
        return PromptOutput(logits, image_features, text_features)

    @torch.no_grad()
    def class_text_classifier(self) -> Tensor:
        """``[C, D]`` L2-normalised fp32 text features of the current class list (text-only
        learners: with the frozen image features they give exactly the learner's logits)."""
        if not self.text_only:
            raise ConfigError(f"{self.name} prompts the image tower or conditions its text on the image, so "
                              f"its classes have no fixed text classifier")
        return F.normalize(self.encode_class_text(None).float(), dim=-1)

    def logit_scale(self) -> Tensor:
        """exp(logit_scale) of the frozen backbone, fp32."""
        return self.backbone.logit_scale.detach().float().exp()

    # ----- losses and learned state -----
    def regularization_loss(self, output: PromptOutput) -> tuple[Tensor, dict[str, Tensor]]:
        """Learner-specific loss added to the task loss (zero except for PromptSRC)."""
        return output.logits.new_zeros(()), {}

    def learned_state(self) -> dict[str, Tensor]:
        """Detached copies of every learned tensor (the learner owns nothing else)."""
        return {k: v.detach().clone() for k, v in self.state_dict().items()}

    def load_learned_state(self, state: Mapping[str, Tensor]) -> None:
        """Load tensors from `learned_state`; keys and shapes must match exactly."""
        own = self.state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise KeyError(f"{type(self).__name__}: learned state mismatch, missing {missing}, "
                           f"unexpected {unexpected}")
        for key, value in state.items():
            if tuple(value.shape) != tuple(own[key].shape):
                raise ValueError(f"{type(self).__name__}.{key}: expected shape {tuple(own[key].shape)}, "
                                 f"got {tuple(value.shape)} (class-specific context does not transfer "
                                 "across class lists)")
        self.load_state_dict(dict(state), strict=True)

    def _check_depth(self, depth: int, blocks: int, tower: str) -> None:
        if not 1 <= depth <= blocks:
            raise ConfigError(f"{self.name}: {tower} prompt depth {depth} must be in [1, {blocks}] "
                             f"for backbone '{self.backbone.name}'")


def fp32(like: Tensor):
    """Context that turns autocast off on `like`'s device: logits, softmax and losses in fp32.
    (Devices without autocast, such as ``meta`` for FLOP counting, have nothing to turn off.)"""
    if not torch.amp.is_autocast_available(like.device.type):
        return contextlib.nullcontext()
    return torch.autocast(device_type=like.device.type, enabled=False)


def _assembly_index(length: int, n_ctx: int, split: int, name_lens: Tensor) -> Tensor:
    """`[C, length]` gather map: SOT, ctx[:split], class name, ctx[split:], rest (see
    `_register_prompt_tokens`). split = n_ctx is CoOp "end", n_ctx // 2 "middle", 0 "front"."""
    pos = torch.arange(length).unsqueeze(0)  # [1, L]
    lens = name_lens.long().unsqueeze(1)  # [C, 1]
    n = n_ctx
    index = n + pos  # tokens keep their place (SOT, and everything after ctx + name)
    index = torch.where((pos >= 1) & (pos <= split), pos - 1, index)
    in_name = (pos > split) & (pos <= split + lens)
    index = torch.where(in_name, 2 * n + pos - split, index)  # name token q sits at 1 + n + q
    in_tail_ctx = (pos > split + lens) & (pos <= n + lens)
    return torch.where(in_tail_ctx, pos - lens - 1, index)
