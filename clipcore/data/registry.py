"""Dataset registry: name -> (prompt template, expected layout, reader)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from clipcore.config import ConfigError

from .records import DatasetSplits

Reader = Callable[[Path], DatasetSplits]


@dataclass(frozen=True)
class DatasetInfo:
    """A registered dataset.

    `template` is the zero-shot prompt template containing `{}`; `layout` describes the expected
    folder layout under the data root (shown in error messages); `read(root)` builds the splits.
    """

    name: str
    template: str
    layout: str
    read: Reader


_REGISTRY: dict[str, DatasetInfo] = {}


def register_dataset(name: str, *, template: str, layout: str) -> Callable[[Reader], Reader]:
    """Decorator registering `reader(root: Path) -> DatasetSplits` under `name`."""
    if "{}" not in template:
        raise ValueError(f"template for dataset {name!r} must contain '{{}}': {template!r}")

    def decorate(reader: Reader) -> Reader:
        existing = _REGISTRY.get(name)
        if existing is not None and existing.read is not reader:
            # Re-registering the same function (module reload) is harmless; a clash is a bug.
            if getattr(existing.read, "__qualname__", None) != getattr(reader, "__qualname__", None):
                raise ValueError(f"dataset {name!r} is already registered")
        _REGISTRY[name] = DatasetInfo(name=name, template=template, layout=layout, read=reader)
        return reader

    return decorate


def get_dataset(name: str) -> DatasetInfo:
    """Look up a registered dataset; an unknown name raises ValueError listing the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "(none registered; import kdpl.datasets?)"
        raise ConfigError(f"unknown dataset {name!r} (config key 'data.name'); registered datasets: {known}") from None


def list_datasets() -> list[str]:
    """Sorted names of all registered datasets."""
    return sorted(_REGISTRY)
