"""Decoded training images held in memory (RAM or the training device) as one uint8 buffer.

Built once per fit by the ``cached`` and ``gpu`` input pipelines (``clipcore.data.pipeline``):
every image is decoded, passed through the augmentation's deterministic head (SimGCD's resize),
and stored as ``[H, W, 3]`` uint8 in one flat buffer (one allocation, no per-image objects, shared
copy-on-write by forked loader workers). Its size is computed from the image headers and
reported, and checked against the memory available, before anything is decoded.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image

from .corrupt import SkippedImage, load_or_skip
from .readers import load_image
from .records import CorruptImageError, DataError, Datum

log = logging.getLogger(__name__)

GB = 1024 ** 3


def file_dimensions(path: str) -> tuple[int, int]:
    """(width, height) from an image file's header, without decoding it; (0, 0) when it cannot be
    read (the file is then decoded, and reported or skipped, when the cache is built)."""
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, SyntaxError, ValueError):
        return 0, 0


def image_dimensions(path: str, load: Callable = load_image) -> tuple[int, int]:
    """(width, height) of an image: from the file header (``load_image``), from the source's own
    ``dimensions`` method, or else by loading it."""
    if load is load_image:
        return file_dimensions(path)
    dimensions = getattr(load, "dimensions", None)
    return dimensions(path) if dimensions is not None else load(path).size


def available_memory(device: torch.device) -> int:
    """Bytes free on ``device``: the GPU's free memory, or the RAM the kernel says is available."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


class DecodedImages:
    """The head-transformed pixels of ``items``, in order; :meth:`image` is a view, never a copy."""

    def __init__(self, items: Sequence[Datum], head: Callable[[Image.Image], Image.Image],
                 head_size: Callable[[int, int], tuple[int, int]], *, device: torch.device,
                 memory_fraction: float, load: Callable = load_image, skip_corrupt: bool = False,
                 threads: int = 1, what: str = "data.pipeline"):
        device = torch.device(device)
        if not 0.0 < memory_fraction <= 1.0:
            raise DataError(f"data.cache_memory_fraction={memory_fraction}: expected a value in (0, 1]")
        items = list(items)
        def cached_size(datum: Datum) -> tuple[int, int]:
            width, height = image_dimensions(datum.path, load)
            return head_size(width, height) if width and height else (0, 0)

        with ThreadPoolExecutor(max(1, threads)) as pool:
            sizes = list(pool.map(cached_size, items))
        needed = sum(w * h * 3 for w, h in sizes)
        free = available_memory(device)
        where = "RAM" if device.type == "cpu" else str(device)
        if needed > memory_fraction * free:
            raise DataError(
                f"{what}: the {len(items)} decoded training images need {needed / GB:.2f} GB, more than "
                f"data.cache_memory_fraction={memory_fraction} of the {free / GB:.2f} GB free in {where}; "
                f"use data.pipeline=cpu (decode per draw), or raise data.cache_memory_fraction")
        log.info("%s: caching %d decoded training images in %s: %.2f GB (%.2f GB free)",
                 what, len(items), where, needed / GB, free / GB)

        self.shapes = torch.zeros(len(items), 2, dtype=torch.long)  # (height, width)
        self.offsets = torch.zeros(len(items) + 1, dtype=torch.long)
        self.skipped: dict[int, SkippedImage] = {}
        host = torch.empty(needed, dtype=torch.uint8)
        host_pixels = host.numpy()  # written through numpy: the decoded arrays are read-only

        def decode(position: int):
            datum = items[position]
            index = datum.index if datum.index >= 0 else position
            image = load_or_skip(datum.path, index, skip_corrupt, load)
            return position, image if isinstance(image, SkippedImage) else np.asarray(head(image))

        offset = 0
        with ThreadPoolExecutor(max(1, threads)) as pool:
            for position, pixels in pool.map(decode, range(len(items))):
                self.offsets[position] = offset
                if isinstance(pixels, SkippedImage):
                    self.skipped[position] = pixels
                    self.offsets[position + 1] = offset
                    continue
                height, width, _ = pixels.shape
                if (width, height) != sizes[position]:  # e.g. a file whose header lies
                    raise CorruptImageError(f"image {items[position].path}: decoded to {width}x{height}, "
                                            f"its header says {sizes[position][0]}x{sizes[position][1]}")
                host_pixels[offset:offset + pixels.size] = pixels.reshape(-1)
                self.shapes[position] = torch.tensor([height, width])
                offset += pixels.size
                self.offsets[position + 1] = offset
        self.buffer = host[:offset].to(device)
        self.device = device

    def __len__(self) -> int:
        return len(self.shapes)

    @property
    def nbytes(self) -> int:
        return self.buffer.numel()

    def size(self, position: int) -> tuple[int, int]:
        """(height, width) of the cached image."""
        height, width = self.shapes[position].tolist()
        return height, width

    def image(self, position: int) -> torch.Tensor | SkippedImage:
        """The ``[H, W, 3]`` uint8 pixels (a view of the buffer), or the image's SkippedImage."""
        if position in self.skipped:
            return self.skipped[position]
        height, width = self.size(position)
        start = int(self.offsets[position])
        return self.buffer[start:start + height * width * 3].view(height, width, 3)

    def pil(self, position: int) -> Image.Image | SkippedImage:
        """The cached pixels as a PIL image (no decoding; CPU caches only)."""
        pixels = self.image(position)
        if isinstance(pixels, SkippedImage):
            return pixels
        return Image.fromarray(pixels.numpy())  # [H, W, 3] uint8: RGB
