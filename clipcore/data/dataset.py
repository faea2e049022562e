"""Torch dataset over a list of `Datum`."""
from __future__ import annotations

from collections.abc import Callable, Sequence

from torch.utils.data import Dataset

from .corrupt import SkippedImage, load_or_skip
from .pipeline import TrainImages
from .records import Datum
from .sampling import augmentation_rng, split_key


class ImageDataset(Dataset):
    """Yields `{"image": transform(PIL RGB), "label": int, "index": int}`.

    Keys are positions, or `SampleKey`s whose seed drives the random augmentations of that draw.
    `index` is `datum.index` when set (>= 0), else the item's position in `items`, so
    per-image state can be keyed consistently across shuffling and ranks. With `skip_corrupt`
    an undecodable image yields a `SkippedImage` (see `clipcore.data.corrupt`). With
    `train_images` (the ``cached`` and ``gpu`` pipelines) the pixels come from its cache instead.
    """

    def __init__(self, items: Sequence[Datum], transform: Callable | None = None,
                 skip_corrupt: bool = False, train_images: TrainImages | None = None):
        self.items = list(items)
        self.transform = transform
        self.skip_corrupt = skip_corrupt
        self.train_images = train_images

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key) -> dict | SkippedImage:
        position, seed = split_key(key)
        datum = self.items[position]
        index = datum.index if datum.index >= 0 else position
        if self.train_images is not None:
            pixels = self.train_images.draw(position, seed)
            return pixels if isinstance(pixels, SkippedImage) else {**pixels, "label": datum.label, "index": index}
        image = load_or_skip(datum.path, index, self.skip_corrupt)
        if isinstance(image, SkippedImage):
            return image
        if self.transform is not None:
            with augmentation_rng(seed):
                image = self.transform(image)
        return {"image": image, "label": datum.label, "index": index}
