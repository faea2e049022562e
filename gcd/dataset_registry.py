"""The GCD dataset registry: a name -> (reader, expected layout) table, and `load_gcd_splits`.

A reader takes the user's dataset folder (plus keyword options) and returns a `RawGCDData`;
`load_gcd_splits` applies the class split and the labelled/unlabelled draw. The readers register
themselves when their modules are imported (`gcd.data` imports all of them); a new dataset is
one reader function with `@register_gcd_dataset(...)`.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from clipcore.config import ConfigError

from .splits import REFERENCE_SPLIT_SEED, GCDSplits, RawGCDData, make_gcd_splits


@dataclass(frozen=True)
class GCDDatasetInfo:
    """A registered GCD dataset: its reader and a description of the expected folder layout."""

    name: str
    layout: str
    read: Callable[..., RawGCDData]


_READERS: dict[str, GCDDatasetInfo] = {}


def register_gcd_dataset(name: str, *, layout: str = "") -> Callable:
    """Decorator registering `reader(root: Path, **options) -> RawGCDData` under `name`."""

    def decorator(reader: Callable[..., RawGCDData]) -> Callable[..., RawGCDData]:
        if name in _READERS and _READERS[name].read is not reader:
            raise ValueError(f"GCD dataset {name!r} is already registered")
        _READERS[name] = GCDDatasetInfo(name, layout, reader)
        return reader

    return decorator


def list_gcd_datasets() -> list[str]:
    return sorted(_READERS)


def get_gcd_dataset(name: str) -> GCDDatasetInfo:
    """The registered dataset `name`; a ConfigError listing the known names otherwise."""
    try:
        return _READERS[name]
    except KeyError:
        raise ConfigError(f"unknown GCD dataset {name!r} (config key 'data.name'); "
                          f"known: {', '.join(sorted(_READERS))}") from None


def load_gcd_splits(name: str, root: str | os.PathLike, *, prop_train_labels: float = 0.5,
                    split_seed: int = REFERENCE_SPLIT_SEED, **reader_options) -> GCDSplits:
    """Read dataset `name` from `root` and split it (see `make_gcd_splits`).

    `split_seed` defaults to the reference's fixed seed 0, so the labelled set is the same for
    every run seed unless the caller passes the run seed on purpose.
    """
    info = get_gcd_dataset(name)
    raw = info.read(Path(root).expanduser(), **reader_options)
    return make_gcd_splits(raw, prop_train_labels=prop_train_labels, split_seed=split_seed,
                           source=f"GCD dataset {name!r} at {root}")
