"""The teacher's cross-modal representations of every train image (spectralgcd spec §2).

z*_i = cos(teacher image_i, teacher text)/tau over the training concepts, computed once per
(teacher weights, concept prompts, transform, tau, dataset items) and cached as ONE dense
``[N_train, K]`` tensor through :func:`clipcore.teacher.load_or_compute`; row i belongs to the
train image with ``Datum.index == i``, so a training step gathers its rows by ``batch["index"]``.

Storage: each row is stored minus its maximum. Softmax, log-softmax and the KL terms are
invariant to that shift, and the entries that carry probability mass are then close to 0,
where float16 is precise (a raw z* near 30-100 would only get 0.03-0.06 resolution).
"""
from __future__ import annotations

import hashlib
import json
import logging
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

from clipcore.config import ConfigError
from clipcore.teacher import cached_text_features, load_or_compute

log = logging.getLogger(__name__)

KIND = "gcd_teacher_representations"
DTYPES = {"float16": torch.float16, "float32": torch.float32}


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def items_digest(items) -> str:
    """Identity of the train split: every (index, path) and the source that reads the paths."""
    return digest([[d.index, d.path] for d in items])


def cache_parts(teacher_fingerprint: str, prompts: list[str], transform, tau: float,
                dataset: str, items, image_source, dtype: str) -> dict:
    return {"teacher": teacher_fingerprint, "prompts": digest(prompts), "n_prompts": len(prompts),
            "transform": repr(transform), "tau": float(tau), "dataset": dataset,
            "items": items_digest(items), "n_items": len(items), "image_source": repr(image_source),
            "dtype": dtype, "layout": "row-max-subtracted"}


def _autocast_off(device: torch.device):
    return torch.autocast(device.type, enabled=False) if device.type in ("cuda", "cpu") else nullcontext()


@torch.no_grad()
def image_concept_logits(backbone, images: torch.Tensor, text_features: torch.Tensor,
                         tau: float) -> torch.Tensor:
    """cos(image, concept)/tau in float32, ``[B, K]`` (``text_features`` already normalised)."""
    device = text_features.device
    with _autocast_off(device):
        feats = backbone.encode_image(images.to(device, non_blocking=True)).float()
        return F.normalize(feats, dim=-1) @ text_features.t() / tau


def teacher_text_features(teacher, prompts: list[str], cache_dir=None, device=None) -> torch.Tensor:
    """Normalised fp32 teacher text features ``[K, D]`` (cached per fingerprint and prompts)."""
    sub = Path(cache_dir) / "text_features" if cache_dir else None
    feats = cached_text_features(teacher, prompts, sub)
    return F.normalize(feats.float(), dim=-1).to(device or "cpu")


def teacher_representations(teacher, prompts: list[str], loader, items, *, tau: float,
                            dataset: str, image_source=None, cache_dir=None,
                            dtype: str = "float16", device=None, skipped=None) -> torch.Tensor:
    """The ``[len(items), K]`` representations (row-max subtracted, ``dtype``), cached.

    ``loader`` yields every train item once (test transform, any order) as batches with
    ``image`` and ``index``; ``items`` is the split (its paths and indices key the cache).
    The teacher is only run on a cache miss, on ``device``. With ``data.skip_corrupt``,
    ``skipped(batch)`` returns ``(batch or None, skipped items)``: the rows of skipped images
    stay zero (training never draws them either).
    """
    if dtype not in DTYPES:
        raise ConfigError(f"gcd.teacher_cache_dtype={dtype!r}: expected one of {sorted(DTYPES)}")
    transform = getattr(loader.dataset, "transform", None)
    parts = cache_parts(teacher.fingerprint(), prompts, transform, tau, dataset, items,
                        image_source, dtype)

    def compute() -> dict[str, torch.Tensor]:
        run_on = torch.device(device or "cpu")
        teacher.to(run_on).eval()
        text = teacher_text_features(teacher, prompts, cache_dir, run_on)
        out = torch.empty(len(items), len(prompts), dtype=DTYPES[dtype])
        seen = torch.zeros(len(items), dtype=torch.bool)
        for batch in loader:
            if skipped is not None:
                batch, missing = skipped(batch)
                seen[[item.index for item in missing]] = True
                if batch is None:
                    continue
            z = image_concept_logits(teacher, batch["image"], text, tau)
            z = (z - z.max(dim=1, keepdim=True).values).to("cpu", DTYPES[dtype])
            out[batch["index"]] = z
            seen[batch["index"]] = True
        if not bool(seen.all()):
            raise RuntimeError(f"the teacher loader missed {int((~seen).sum())} of {len(items)} "
                               f"train images; indices must cover 0..N-1")
        log.info("teacher representations: %d images x %d concepts", *out.shape)
        return {"representations": out}

    folder = Path(cache_dir) / "representations" if cache_dir else None
    return load_or_compute(KIND, parts, compute, folder)["representations"]
