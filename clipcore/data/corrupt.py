"""Skipping undecodable images (``data.skip_corrupt``), counted and bounded.

By default an image that cannot be decoded stops the run with an error naming the file. With
``data.skip_corrupt=true`` a dataset returns a :class:`SkippedImage` instead; the collate function
drops it from the batch and lists it under ``batch["skipped"]``; the datamodule's
:class:`CorruptImageTracker` logs each file once and fails when more than
``data.max_corrupt_fraction`` of a split has been skipped. A batch whose every image was skipped
collates to ``None`` (training skips such a step; the evaluation steps ignore it).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional

from torch.utils.data import default_collate

from .readers import load_image
from .records import CorruptImageError, DataError

log = logging.getLogger(__name__)

SKIPPED_KEY = "skipped"


@dataclass(frozen=True)
class SkippedImage:
    """Stands for an undecodable image in a batch: its file and dataset index."""

    path: str
    index: int
    reason: str


def load_or_skip(path: str, index: int, skip_corrupt: bool, load: Callable = load_image):
    """The decoded image, or a :class:`SkippedImage` when it is corrupt and skipping is on."""
    try:
        return load(path)
    except CorruptImageError as exc:
        if not skip_corrupt:
            raise
        return SkippedImage(str(path), int(index), str(exc))


class SkippingCollate:
    """Default collation of the decodable samples; skipped ones go to ``batch["skipped"]``."""

    def __init__(self, split: str):
        self.split = split

    def __call__(self, samples: list):
        skipped = [s for s in samples if isinstance(s, SkippedImage)]
        kept = [s for s in samples if not isinstance(s, SkippedImage)]
        if not kept:
            return None if not skipped else {SKIPPED_KEY: [(self.split, s) for s in skipped], "empty": True}
        batch = default_collate(kept)
        if skipped:
            batch[SKIPPED_KEY] = [(self.split, s) for s in skipped]
        return batch


def collate_for(split: str, skip_corrupt: bool) -> Optional[SkippingCollate]:
    """The collate function of a loader of ``split`` (None: torch's default)."""
    return SkippingCollate(split) if skip_corrupt else None


class CorruptImageTracker:
    """Counts the distinct skipped files of each split and enforces the allowed fraction."""

    def __init__(self, split_sizes: dict[str, int], max_fraction: float):
        if not 0.0 <= max_fraction <= 1.0:
            raise DataError(f"data.max_corrupt_fraction={max_fraction}: expected a value in [0, 1]")
        self.split_sizes = dict(split_sizes)
        self.max_fraction = float(max_fraction)
        self.skipped: dict[str, dict[str, str]] = {}

    def record(self, batch) -> tuple[Optional[dict], list[SkippedImage]]:
        """Log and count the skipped images of ``batch``; returns the batch without them (None
        when nothing decodable is left) and the skipped items."""
        if not isinstance(batch, dict) or SKIPPED_KEY not in batch:
            return batch, []
        entries = batch.pop(SKIPPED_KEY)
        for split, item in entries:
            seen = self.skipped.setdefault(split, {})
            if item.path in seen:
                continue
            seen[item.path] = item.reason
            size = self.split_sizes.get(split, 0)
            log.warning("skipped corrupt image %s (%s split): %s [%d of %d %s images skipped]",
                        item.path, split, item.reason, len(seen), size, split)
            if size and len(seen) > self.max_fraction * size:
                files = ", ".join(list(seen)[:5])
                raise DataError(f"{len(seen)} of {size} {split} images are corrupt, more than "
                                f"data.max_corrupt_fraction={self.max_fraction} allows (first: {files}); "
                                f"fix or remove them, or raise the fraction")
        return (None if batch.pop("empty", False) else batch), [item for _, item in entries]

    def counts(self) -> dict[str, int]:
        return {split: len(paths) for split, paths in self.skipped.items()}
