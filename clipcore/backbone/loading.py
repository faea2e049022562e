"""Loading any open_clip model: built-in names and tags, local weight files, `local-dir:`
bundles, registered name resolvers, bare architecture configs (random init, seeded by name)."""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import open_clip
import torch
from torch import nn

from clipcore.backbone.clip import TEXT_TOWER_MSG, BackboneLoadError, ClipBackbone
from clipcore.encoder import FrozenEncoder
from clipcore.paths import LOCAL_DIR

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
_REQUIRED_CFG_KEYS = ("embed_dim", "vision_cfg", "text_cfg")
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
                                f"{TEXT_TOWER_MSG}")


def read_model_config(config: dict | str | os.PathLike) -> tuple[dict, Optional[dict]]:
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
        model_cfg, preprocess = read_model_config(config)
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
    model_cfg, _ = read_model_config(config_path)
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


