"""Training input pipelines, ``data.pipeline``: where the training images are decoded and augmented.

- ``cpu`` (default): every draw decodes its file and runs the train transform in a loader worker.
- ``cached``: every training image is decoded once per fit (and, for SimGCD, resized: the
  deterministic head of its transform) into RAM; the workers run the random tail (crop, flip,
  normalise) on the cached pixels. The same images as ``cpu``, bit for bit.
- ``gpu``: the cache lives on the training device; the loader only draws each sample's crop box
  and flip (from the same seeds, with torchvision's own calls: the same parameters as ``cpu``), and
  the views are cut, resized, flipped and normalised on the device before the step. SimGCD's views
  equal the ``cpu`` ones exactly; Dassl's resized crops use torch's antialiased bicubic instead of
  PIL's (within a few grey levels).

Only the training loader changes; evaluation reads files as before. The cache's size is
computed from the image headers, logged, and refused (naming both figures) when it exceeds
``data.cache_memory_fraction`` of the free RAM or device memory.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .augment import BOXES_KEY, FLIPS_KEY, TrainAugmentation
from .corrupt import SkippedImage
from .image_cache import DecodedImages
from .readers import load_image
from .records import DataError, Datum
from .sampling import augmentation_rng

PIPELINES = ("cpu", "cached", "gpu")
CACHE_INDEX_KEY = "cache_index"


def check_pipeline(name: str) -> str:
    if name not in PIPELINES:
        raise DataError(f"data.pipeline={name!r}: expected one of {', '.join(PIPELINES)}")
    return name


class TrainImages:
    """The pixel part of each training draw under ``cached`` or ``gpu`` (``cpu`` is the datasets'
    own path): ``draw(position, seed)`` gives the sample's image entry (``{key: tensor}``, or the
    crop parameters under ``gpu``) or a :class:`SkippedImage`; :meth:`on_device` turns a collated
    ``gpu`` batch into its views."""

    def __init__(self, pipeline: str, augmentation: TrainAugmentation, *, key: str,
                 load: Callable = load_image, skip_corrupt: bool = False):
        if check_pipeline(pipeline) == "cpu":
            raise ValueError("the cpu pipeline decodes in the datasets themselves")
        self.pipeline = pipeline
        self.augmentation = augmentation
        self.tail = augmentation.tail()
        self.key = key  # "image" ([3, H, W], one view) or "images" ([views, 3, H, W])
        self.load = load
        self.skip_corrupt = skip_corrupt
        self.cache: DecodedImages | None = None
        self._cached_items: tuple | None = None

    @property
    def workers_needed(self) -> bool:
        """False under ``gpu``: drawing a few crop boxes is no work for a worker process."""
        return self.pipeline != "gpu"

    def prepare(self, items: Sequence[Datum], device: torch.device, memory_fraction: float,
                threads: int) -> None:
        """Build the cache of ``items`` (``cached``: in RAM; ``gpu``: on ``device``), once per
        item list."""
        device = torch.device("cpu") if self.pipeline == "cached" else torch.device(device)
        key = (tuple(d.path for d in items), str(device))
        if self._cached_items == key:
            return
        self.cache = None  # the old cache's memory is free before the new one is counted
        self.cache = DecodedImages(items, self.augmentation.head, self.augmentation.head_size,
                                   device=device, memory_fraction=memory_fraction, load=self.load,
                                   skip_corrupt=self.skip_corrupt, threads=threads,
                                   what=f"data.pipeline={self.pipeline}")
        self._cached_items = key

    def draw(self, position: int, seed: int | None) -> dict | SkippedImage:
        if self.pipeline == "cached":
            image = self.cache.pil(position)
            if isinstance(image, SkippedImage):
                return image
            with augmentation_rng(seed):
                views = [self.tail(image) for _ in range(self.augmentation.views)]
            return {self.key: views[0] if self.key == "image" else torch.stack(views)}
        if position in self.cache.skipped:
            return self.cache.skipped[position]
        with augmentation_rng(seed):
            boxes, flips = self.augmentation.sample(*self.cache.size(position))
        return {CACHE_INDEX_KEY: position, BOXES_KEY: boxes, FLIPS_KEY: flips}

    def on_device(self, batch):
        """Under ``gpu``, before the batch moves: cut its views out of the device cache."""
        if not isinstance(batch, dict) or CACHE_INDEX_KEY not in batch:
            return batch
        images = [self.cache.image(p) for p in batch.pop(CACHE_INDEX_KEY).tolist()]
        views = self.augmentation.apply(images, batch.pop(BOXES_KEY), batch.pop(FLIPS_KEY))
        batch[self.key] = views[:, 0] if self.key == "image" else views
        return batch
