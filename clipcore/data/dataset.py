"""Torch dataset over a list of `Datum`."""
from __future__ import annotations

from collections.abc import Callable, Sequence

from torch.utils.data import Dataset

from .readers import load_image
from .records import Datum


class ImageDataset(Dataset):
    """Yields `{"image": transform(PIL RGB), "label": int, "index": int}`.

    `index` is `datum.index` when set (>= 0), else the item's position in `items`, so
    per-image state can be keyed consistently across shuffling and ranks.
    """

    def __init__(self, items: Sequence[Datum], transform: Callable | None = None):
        self.items = list(items)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, position: int) -> dict:
        datum = self.items[position]
        image = load_image(datum.path)
        if self.transform is not None:
            image = self.transform(image)
        index = datum.index if datum.index >= 0 else position
        return {"image": image, "label": datum.label, "index": index}
