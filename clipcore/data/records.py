"""Dataset records: one labelled image (`Datum`) and the three splits of a dataset."""
from __future__ import annotations

from dataclasses import dataclass, field

from clipcore.errors import UserError


class DataError(UserError, RuntimeError):
    """Bad dataset input: a missing folder or split file, an undecodable image, bad labels."""


class CorruptImageError(DataError):
    """An image file exists but cannot be decoded (truncated, corrupt, not an image)."""

    def __init__(self, message: str, path: str = ""):
        super().__init__(message)
        self.path = path


@dataclass(frozen=True)
class Datum:
    """One labelled image.

    `index` is an optional dense, unique id of the image within its dataset (used by methods
    that key per-image state, e.g. cached teacher outputs); -1 means "use the position".
    """

    path: str
    label: int
    classname: str
    index: int = -1


@dataclass
class DatasetSplits:
    """Train/val/test lists of `Datum` plus the class names indexed by label."""

    train: list[Datum]
    val: list[Datum]
    test: list[Datum]
    classnames: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def split(self, name: str) -> list[Datum]:
        """Return the split called `name` ('train', 'val' or 'test')."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}; expected 'train', 'val' or 'test'")
        return getattr(self, name)

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def classnames_from_items(*splits: list[Datum], source: str = "dataset") -> list[str]:
    """Class names ordered by label, checked for consistency across all given splits.

    Labels must be exactly 0..n-1 and every label must carry a single class name; otherwise the
    split files disagree with each other and training would silently mislabel images.
    """
    names: dict[int, str] = {}
    for items in splits:
        for datum in items:
            known = names.setdefault(datum.label, datum.classname)
            if known != datum.classname:
                raise DataError(
                    f"{source}: label {datum.label} is named both {known!r} and "
                    f"{datum.classname!r} (e.g. {datum.path})"
                )
    if not names:
        return []
    labels = sorted(names)
    if labels != list(range(len(labels))):
        missing = sorted(set(range(labels[-1] + 1)) - set(labels))[:10]
        raise DataError(
            f"{source}: labels must be 0..{len(labels) - 1} without gaps; "
            f"min={labels[0]}, max={labels[-1]}, missing (first 10)={missing}"
        )
    return [names[label] for label in labels]

