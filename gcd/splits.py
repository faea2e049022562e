"""GCD dataset descriptions: class remapping, the labelled/unlabelled split and image sources.

A reader (see `gcd.datasets`) returns a `RawGCDData`: every train and test image with its
*original* class id, the dataset's class names indexed by that id, and the known/unknown class
lists in the order the reference uses. `make_gcd_splits` turns it into a `GCDSplits`:

- labels are remapped so that `known + unknown` (in that order) becomes 0..C-1, so old classes
  are 0..n_old-1 (the reference's `target_transform`; the evaluation's old/new mask relies on it);
- `Datum.index` is a dense unique id over the whole train set (labelled and unlabelled share the
  range 0..N-1; the test split has its own 0..M-1), used to look up cached teacher outputs;
- the labelled set is `int(prop * n)` of the old-class train images, drawn like the reference's
  `subsample_instances` (`np.random.seed(0); np.random.choice(range(n), replace=False, ...)`)
  but from a local `RandomState`, so numpy's global RNG is never touched.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from clipcore.config import ConfigError
from clipcore.data import DataError, Datum, load_image
from clipcore.data.image_cache import file_dimensions

# The reference reseeds with 0 inside `subsample_instances`, whatever --seed says.
REFERENCE_SPLIT_SEED = 0


class FileImageSource:
    """Resolves `Datum.path` as an image file on disk."""

    def __call__(self, path: str) -> Image.Image:
        return load_image(path)

    @staticmethod
    def dimensions(path: str) -> tuple[int, int]:
        return file_dimensions(path)

    def __repr__(self) -> str:
        return "FileImageSource()"


class ArrayImageSource:
    """Resolves in-memory images addressed as `"<tag>:<part>:<row>"` (e.g. `cifar10:train:17`).

    `arrays[part]` is a uint8 array `[N, H, W, 3]`. The path stays a readable, unique string so
    that it can be logged and hashed into cache keys like a file path.
    """

    def __init__(self, tag: str, arrays: Mapping[str, np.ndarray]):
        self.tag = tag
        self.arrays = dict(arrays)
        for part, array in self.arrays.items():
            if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
                raise DataError(f"{tag}:{part}: expected uint8 images [N, H, W, 3], "
                                f"got {array.dtype} {array.shape}")

    def path(self, part: str, row: int) -> str:
        return f"{self.tag}:{part}:{row}"

    def __call__(self, path: str) -> Image.Image:
        tag, part, row = path.rsplit(":", 2)
        if tag != self.tag or part not in self.arrays:
            raise DataError(f"image {path!r} does not belong to the in-memory source "
                            f"{self.tag!r} (parts {sorted(self.arrays)})")
        return Image.fromarray(self.arrays[part][int(row)], mode="RGB")

    def dimensions(self, path: str) -> tuple[int, int]:
        height, width = self.arrays[path.rsplit(":", 2)[1]].shape[1:3]
        return width, height

    def __repr__(self) -> str:
        sizes = {part: len(a) for part, a in self.arrays.items()}
        return f"ArrayImageSource({self.tag!r}, {sizes})"


ImageSource = Callable[[str], Image.Image]


@dataclass
class RawGCDData:
    """A reader's output: images with original class ids, before the GCD split.

    `known_classes` / `unknown_classes` are original class ids in the reference's order; images
    of classes in neither list are dropped by `make_gcd_splits`.
    """

    train: list[Datum]
    test: list[Datum]
    classnames: list[str]
    known_classes: list[int]
    unknown_classes: list[int]
    image_source: ImageSource = field(default_factory=FileImageSource)


@dataclass
class GCDSplits:
    """A GCD dataset: labelled and unlabelled train images, test images, remapped class names.

    Labels are 0..C-1 with old (known) classes first (`label < n_old`).
    """

    train_labelled: list[Datum]
    train_unlabelled: list[Datum]
    test: list[Datum]
    classnames: list[str]
    n_old: int
    image_source: ImageSource = field(default_factory=FileImageSource)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    @property
    def train(self) -> list[Datum]:
        """All train images, labelled first (the reference's `MergedDataset` order)."""
        return self.train_labelled + self.train_unlabelled

    @property
    def old_classnames(self) -> list[str]:
        return self.classnames[: self.n_old]

    @property
    def new_classnames(self) -> list[str]:
        return self.classnames[self.n_old:]

    def sizes(self) -> dict[str, int]:
        return {"train_labelled": len(self.train_labelled),
                "train_unlabelled": len(self.train_unlabelled), "test": len(self.test)}


def subsample_instances(n: int, prop: float, seed: int = REFERENCE_SPLIT_SEED) -> np.ndarray:
    """Positions drawn like the reference: `seed(s); choice(range(n), replace=False,
    size=int(prop * n))`. A local `RandomState(s)` yields the same legacy Mersenne-Twister stream
    as the global `np.random.seed(s)`, without mutating global state."""
    if not 0.0 <= prop <= 1.0:
        raise ConfigError(f"data.prop_train_labels must be in [0, 1], got {prop}")
    rng = np.random.RandomState(seed)
    return rng.choice(range(n), replace=False, size=(int(prop * n),))


def _check_class_lists(known: Sequence[int], unknown: Sequence[int], num_classes: int,
                       source: str) -> list[int]:
    order = [int(c) for c in known] + [int(c) for c in unknown]
    if not known:
        raise DataError(f"{source}: the known (labelled) class list is empty")
    duplicates = sorted(c for c, count in Counter(order).items() if count > 1)
    if duplicates:
        raise DataError(f"{source}: classes listed twice across known/unknown: {duplicates[:10]}")
    bad = [c for c in order if not 0 <= c < num_classes]
    if bad:
        raise DataError(f"{source}: class ids {bad[:10]} out of range 0..{num_classes - 1}")
    return order


def make_gcd_splits(raw: RawGCDData, *, prop_train_labels: float = 0.5,
                    split_seed: int = REFERENCE_SPLIT_SEED, source: str = "dataset") -> GCDSplits:
    """Remap labels (known first), assign dense indices and draw the labelled subset.

    Labelled images keep their train order; the unlabelled set is every other train image
    (old-class leftovers and all new-class images) in train order. The reference orders its
    subsets by draw order or by Python `set` iteration; the *membership* is what matches it.
    """
    order = _check_class_lists(raw.known_classes, raw.unknown_classes, len(raw.classnames), source)
    remap = {original: new for new, original in enumerate(order)}
    classnames = [raw.classnames[c] for c in order]
    n_old = len(raw.known_classes)

    def relabel(items: list[Datum]) -> list[Datum]:
        kept = [d for d in items if d.label in remap]
        return [Datum(d.path, remap[d.label], classnames[remap[d.label]], index=i)
                for i, d in enumerate(kept)]

    train, test = relabel(raw.train), relabel(raw.test)
    if not train:
        raise DataError(f"{source}: no train images belong to the known or unknown classes")
    old_positions = [i for i, d in enumerate(train) if d.label < n_old]
    drawn = subsample_instances(len(old_positions), prop_train_labels, split_seed)
    labelled_positions = {old_positions[j] for j in drawn.tolist()}
    labelled = [d for i, d in enumerate(train) if i in labelled_positions]
    unlabelled = [d for i, d in enumerate(train) if i not in labelled_positions]
    return GCDSplits(labelled, unlabelled, test, classnames, n_old, raw.image_source)

