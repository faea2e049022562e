"""Load any open_clip model, and drive an OpenAI-style CLIP's towers piece by piece.

This is the only module that knows open_clip's private structure. It offers:

* `load_encoder`: any open_clip model (CLIP, SigLIP, CoCa, EVA, Hugging Face text towers) as a
  `clipcore.encoder.FrozenEncoder`: what teachers and zero-shot evaluation need.
* `load_backbone`: a `ClipBackbone` (a student for prompt learning): the text tower driven from
  token *embeddings* and the vision tower driven block by block with a hook (deep visual
  prompts); only OpenAI-style text towers expose those, other models get an error saying so.

Both take a built-in name + pretrained tag, a local weights file, a `local-dir:` bundle, a name
served by a registered resolver (`register_backbone_resolver`; the offline demo's `synthetic-*`
models register one), or a bare architecture config (random init), failing fast and clearly
when weights are missing offline. `clipcore.bundle.save_local_dir` writes a `local-dir:` bundle.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import logging
import os
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import open_clip
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from clipcore.attention import AttentionDeltas, block_with_deltas, prefix_block, prefix_keys_values, suffix_block
from clipcore.encoder import LOCAL_DIR, FrozenEncoder
from clipcore.errors import UserError

log = logging.getLogger(__name__)

Hook = Callable[[int, torch.Tensor], torch.Tensor]
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
_REQUIRED_CFG_KEYS = ("embed_dim", "vision_cfg", "text_cfg")
_TEXT_TOWER_MSG = ("Prompt learning edits the token embeddings of an OpenAI-style text tower "
                   "(token_embedding/positional_embedding/transformer/ln_final/text_projection on the "
                   "CLIP model), which this model does not have. It can still be a teacher "
                   "(teacher.name=...) or be evaluated zero-shot (method=zeroshot).")


class BackboneLoadError(UserError, RuntimeError):
    """Weights could not be found or loaded; the message says how to point at a local copy."""


def _load_error(name: str, tag: Optional[str], reason: str) -> BackboneLoadError:
    return BackboneLoadError(
        f"Could not load open_clip model '{name}' with pretrained='{tag}': {reason}\n"
        f"If you are offline or the download is blocked, point at a local copy instead:\n"
        f"  load_backbone('{name}', pretrained='/path/to/weights.safetensors')  (.pt/.bin also work)\n"
        f"  load_backbone('local-dir:/path/to/bundle')  (a folder with open_clip_config.json and "
        f"open_clip_model.safetensors)\n"
        f"Downloads are cached by huggingface_hub (HF_HOME or cache_dir)."
    )


def text_tower_kind(model_cfg: dict) -> Optional[str]:
    """None for an OpenAI-style text tower, else what the tower is (for the student error)."""
    text_cfg = model_cfg.get("text_cfg", {})
    if text_cfg.get("hf_model_name"):
        return f"a Hugging Face text tower ({text_cfg['hf_model_name']})"
    if "multimodal_cfg" in model_cfg:
        return "a CoCa text tower with a multimodal decoder"
    if model_cfg.get("custom_text"):
        return "a custom text tower (SigLIP, EVA and similar open_clip models)"
    return None


def _check_prompt_text(model_cfg: dict, label: str) -> None:
    kind = text_tower_kind(model_cfg)
    if kind is not None:
        raise BackboneLoadError(f"Model '{label}' cannot be a prompt-learning student: it has {kind}. "
                                f"{_TEXT_TOWER_MSG}")


def _read_config(config: dict | str | os.PathLike) -> tuple[dict, Optional[dict]]:
    """Return (model_cfg, preprocess_cfg) from a dict / JSON path (bare or open_clip_config style)."""
    if not isinstance(config, dict):
        path = Path(config)
        if not path.is_file():
            raise BackboneLoadError(f"Model config JSON not found: {path}")
        config = json.loads(path.read_text())
    config = copy.deepcopy(config)
    preprocess = config.get("preprocess_cfg") if "model_cfg" in config else None
    model_cfg = config["model_cfg"] if "model_cfg" in config else config
    missing = [k for k in _REQUIRED_CFG_KEYS if k not in model_cfg]
    if missing:
        raise BackboneLoadError(f"Model config lacks required keys {missing}; expected {list(_REQUIRED_CFG_KEYS)}")
    return model_cfg, preprocess


def _tokenizer_for_cfg(model_cfg: dict):
    text_cfg = model_cfg.get("text_cfg", {})
    context_length = text_cfg.get("context_length", 77)
    tokenizer_name = text_cfg.get("hf_tokenizer_name")
    if tokenizer_name:
        return open_clip.tokenizer.HFTokenizer(tokenizer_name, context_length=context_length,
                                               **text_cfg.get("tokenizer_kwargs", {}))
    # The BPE vocabulary ships inside the wheel, so this works offline.
    return open_clip.tokenizer.SimpleTokenizer(context_length=context_length)


# Name prefix -> function returning the local-dir bundle that serves the name (e.g. models that
# are built on first use and cached). Registered by the code that owns those models.
_RESOLVERS: dict[str, Callable[[str], os.PathLike]] = {}


def register_backbone_resolver(prefix: str, resolve: Callable[[str], os.PathLike]) -> None:
    """Serve every model name starting with ``prefix`` from the bundle ``resolve(name)`` returns."""
    _RESOLVERS[prefix] = resolve


def _resolver_for(name: str) -> Optional[Callable[[str], os.PathLike]]:
    return next((fn for prefix, fn in _RESOLVERS.items() if name.startswith(prefix)), None)


@dataclass
class _Built:
    model: nn.Module
    tokenizer: object
    model_cfg: dict
    # What plain open_clip.create_model(name, pretrained=...) loads the same weights from.
    source: Optional[tuple[str, Optional[str]]]


def load_encoder(name: str, pretrained: str | None = None, *, config: dict | str | None = None,
                 cache_dir: str | None = None, device="cpu") -> FrozenEncoder:
    """Any open_clip model as a `FrozenEncoder` (teachers, zero-shot); arguments as `load_backbone`."""
    built = _build(name, pretrained, config, cache_dir, device, check=None)
    return FrozenEncoder(built.model, built.tokenizer, name=name, pretrained=_stored_tag(name, pretrained, config),
                         model_cfg=built.model_cfg, open_clip_source=built.source)


def load_backbone(name: str, pretrained: str | None = None, *, config: dict | str | None = None,
                  cache_dir: str | None = None, device="cpu") -> "ClipBackbone":
    """Build a `ClipBackbone` (an OpenAI-style CLIP a prompt learner can drive).

    Args:
        name: built-in open_clip name (use `-quickgelu` names for OpenAI/DFN weights),
            `local-dir:/path/to/bundle`, or a name a registered resolver serves. With `config`
            it is only a label.
        pretrained: a tag (`openai`, `dfn5b`...), a path to a .pt/.bin/.safetensors file, or None
            (random init).
        config: dict or JSON path with an open_clip model config (`embed_dim`, `vision_cfg`,
            `text_cfg`, `quick_gelu`...), or an `open_clip_config.json`-style dict with
            `model_cfg`/`preprocess_cfg`. `pretrained` may then only be a weights file or None.
        cache_dir: download cache for tags (defaults to the huggingface_hub cache).
        device: where the model is put.
    """
    built = _build(name, pretrained, config, cache_dir, device, check=_check_prompt_text)
    return ClipBackbone(built.model, built.tokenizer, name=name, pretrained=_stored_tag(name, pretrained, config),
                        model_cfg=built.model_cfg, open_clip_source=built.source)


def _stored_tag(name: str, pretrained: Optional[str], config) -> Optional[str]:
    # Bundles (local-dir:, resolver names) carry their own weights: no tag is recorded.
    if config is None and (name.startswith(LOCAL_DIR) or _resolver_for(name) is not None):
        return None
    return pretrained


def _build(name: str, pretrained: Optional[str], config, cache_dir, device,
           check: Optional[Callable[[dict, str], None]]) -> _Built:
    resolver = _resolver_for(name) if config is None else None
    if resolver is not None:
        return _build_local_dir(Path(resolver(name)), device, check, label=name)

    if config is not None:
        model_cfg, preprocess = _read_config(config)
        if check:
            check(model_cfg, name)
        if pretrained is not None and not os.path.isfile(pretrained):
            raise BackboneLoadError(f"With `config`, pretrained must be a weights file or None; got '{pretrained}'")
        try:
            with _seeded_random_init(name, pretrained), _registered_config(model_cfg) as key, _quiet_factory():
                model = open_clip.create_model(key, pretrained=pretrained, device=device,
                                               force_preprocess_cfg=preprocess, pretrained_text=False)
        except Exception as e:  # noqa: BLE001 - rewrap with the model name and remedy
            raise _load_error(name, pretrained, f"{type(e).__name__}: {e}") from e
        log.info("%s: %s built from its architecture config, %s", name, type(model).__name__,
                 f"weights from {pretrained}" if pretrained else "random weights (no pretrained weights)")
        return _Built(model, _tokenizer_for_cfg(model_cfg), model_cfg, None)

    if name.startswith(LOCAL_DIR):
        if pretrained is not None:
            raise BackboneLoadError("A local-dir: bundle carries its own weights; pass pretrained=None")
        return _build_local_dir(Path(name[len(LOCAL_DIR):]).expanduser(), device, check, label=name)

    model_cfg = open_clip.get_model_config(name)
    if model_cfg is None:
        raise BackboneLoadError(f"Unknown open_clip model name '{name}' (see open_clip.list_models() or "
                                f"`clipdistill list models`); for a local bundle use name='local-dir:/path/to/bundle'")
    if check:
        check(model_cfg, name)
    if pretrained is not None and not os.path.isfile(pretrained):
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags:
            looks_like_file = pretrained.endswith(WEIGHT_SUFFIXES) or os.sep in pretrained
            reason = (f"weights file not found: {pretrained}" if looks_like_file
                      else f"unknown pretrained tag; tags for '{name}': {tags}")
            raise _load_error(name, pretrained, reason)
        tag_cfg = open_clip.get_pretrained_cfg(name, pretrained)
        if tag_cfg.get("quick_gelu", False) and not model_cfg.get("quick_gelu", False):
            warnings.warn(f"Tag '{pretrained}' was trained with QuickGELU but '{name}' uses GELU; "
                          f"use '{name}-quickgelu' to reproduce the published model.", UserWarning)
    try:
        with _seeded_random_init(name, pretrained):
            # pretrained=None is random init throughout: no Hugging Face text weights either.
            model = open_clip.create_model(name, pretrained=pretrained, device=device, cache_dir=cache_dir,
                                           pretrained_text=pretrained is not None)
        tokenizer = open_clip.get_tokenizer(name, cache_dir=cache_dir)
    except Exception as e:  # noqa: BLE001 - rewrap with the model name and remedy
        raise _load_error(name, pretrained, f"{type(e).__name__}: {e}") from e
    return _Built(model, tokenizer, model_cfg, (name, pretrained))


@contextlib.contextmanager
def _registered_config(model_cfg: dict):
    """``model_cfg`` under a temporary built-in name, so that open_clip's factory picks the model
    class (CLIP, CustomTextCLIP, CoCa) and the tower flags exactly as for its own configs."""
    registry = open_clip.factory._MODEL_CONFIGS
    key = "clipcore-config-" + hashlib.sha256(json.dumps(model_cfg, sort_keys=True).encode()).hexdigest()[:12]
    registry[key] = copy.deepcopy(model_cfg)
    try:
        yield key
    finally:
        registry.pop(key, None)


class _DropFactoryNotes(logging.Filter):
    """open_clip's factory logs to the root logger ("Loaded built-in ViT-B-32 model config", "No
    pretrained weights loaded for model ..."), which misnames models built from a config; we log
    our own line instead. Errors still pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        from_factory = "open_clip" in record.pathname
        return not (from_factory and (record.levelno <= logging.INFO or "No pretrained weights" in record.getMessage()))


@contextlib.contextmanager
def _quiet_factory():
    root = logging.getLogger()
    drop = _DropFactoryNotes()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


@contextlib.contextmanager
def _seeded_random_init(name: str, pretrained: Optional[str]):
    """Random weights are a function of the model's name, not of the caller's RNG state.

    A random-init backbone (tests, benchmarks) then has the same weights and fingerprint in
    every process and every run, so its checkpoints can be resumed and evaluated; the global
    generators are left as they were.
    """
    if pretrained is not None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(hashlib.sha256(name.encode()).hexdigest()[:8], 16))
        yield


def _build_local_dir(bundle: Path, device, check, label: str) -> _Built:
    config_path = bundle / "open_clip_config.json"
    if not config_path.is_file():
        raise _load_error(LOCAL_DIR + str(bundle), None, f"missing {config_path}")
    model_cfg, _ = _read_config(config_path)
    if check:
        check(model_cfg, label)
    try:
        with _quiet_factory():
            model = open_clip.create_model(LOCAL_DIR + str(bundle), device=device, require_pretrained=True)
        tokenizer = open_clip.get_tokenizer(LOCAL_DIR + str(bundle))
    except Exception as e:  # noqa: BLE001 - rewrap with the bundle path and remedy
        raise _load_error(LOCAL_DIR + str(bundle), None, f"{type(e).__name__}: {e}") from e
    log.info("%s: %s loaded from the bundle %s", label, type(model).__name__, bundle)
    return _Built(model, tokenizer, model_cfg, (LOCAL_DIR + str(bundle.resolve()), None))


class ClipBackbone(FrozenEncoder):
    """An OpenAI-style open_clip CLIP with prompt-friendly entry points into both towers."""

    def __init__(self, model: nn.Module, tokenizer, *, name: str, pretrained: Optional[str],
                 model_cfg: dict, open_clip_source: Optional[tuple[str, Optional[str]]] = None):
        missing = [a for a in ("token_embedding", "positional_embedding", "transformer", "ln_final",
                               "text_projection") if not hasattr(model, a)]
        if missing:
            raise BackboneLoadError(f"Model '{name}' ({type(model).__name__}) lacks {missing}. {_TEXT_TOWER_MSG}")
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
