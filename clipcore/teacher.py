"""Caches of frozen-model outputs (teacher text features, per-image teacher representations).

Every cache file is keyed by a sha256 of everything that determines its content (backbone
fingerprint, prompts, transform, temperature, dataset split ...), and the key is stored inside the
file and checked on load: a stale or foreign cache is recomputed, never silently reused. The file
also stores a sha256 of its tensor bytes, checked on every load: a cache whose data was
overwritten or damaged (with its header intact) is recomputed with a warning. Files are
safetensors (no pickle) written atomically.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from clipcore.io import atomic_write
from clipcore.paths import cache_root

log = logging.getLogger(__name__)

KEY_FIELD = "cache_key"
CHECKSUM_FIELD = "tensor_sha256"


def cache_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def tensor_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes (in name order)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()


def load_or_compute(kind: str, parts: dict, compute: Callable[[], dict[str, torch.Tensor]],
                    cache_dir: str | Path | None = None) -> dict[str, torch.Tensor]:
    """Return the cached tensors for ``parts``, computing and storing them on a miss."""
    key = cache_key({"kind": kind, **parts})
    folder = Path(cache_dir) if cache_dir else cache_root() / kind
    path = folder / f"{key[:32]}.safetensors"
    if path.is_file():
        cached = _read_verified(path, key)
        if cached is not None:
            return cached
    tensors = {k: v.detach().cpu().contiguous() for k, v in compute().items()}
    metadata = {KEY_FIELD: key, CHECKSUM_FIELD: tensor_checksum(tensors),
                "parts": json.dumps(parts, default=str)[:10000]}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    log.info("cached %s at %s", kind, path)
    return tensors


def _read_verified(path: Path, key: str) -> dict[str, torch.Tensor] | None:
    """The cached tensors, or None (with a warning) when the file is stale, foreign or damaged."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if metadata.get(KEY_FIELD) != key:
                log.warning("cache %s does not match its key; recomputing", path)
                return None
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as exc:  # a corrupt cache is recomputed, with a warning
        log.warning("cache %s is unreadable (%s); recomputing", path, exc)
        return None
    if metadata.get(CHECKSUM_FIELD) != tensor_checksum(tensors):
        log.warning("cache %s fails its checksum (its tensor bytes changed since it was written); "
                    "recomputing", path)
        return None
    return tensors


@torch.no_grad()
def encode_prompts(backbone, prompts: list[str], chunk: int = 256) -> torch.Tensor:
    """Unnormalised fp32 text features of ``prompts``, encoded in chunks on the backbone's device."""
    device = backbone.logit_scale.device
    parts = [backbone.encode_text(backbone.tokenize(prompts[i:i + chunk]).to(device)).float()
             for i in range(0, len(prompts), chunk)]
    return torch.cat(parts)


def cached_text_features(backbone, prompts: list[str], cache_dir: str | Path | None = None) -> torch.Tensor:
    """Teacher text features (unnormalised, as the reference stores them), computed once per
    (weights fingerprint, prompt list)."""
    parts = {"fingerprint": backbone.fingerprint(), "prompts": prompts}
    return load_or_compute("text_features", parts, lambda: {"features": encode_prompts(backbone, prompts)},
                           cache_dir)["features"]
