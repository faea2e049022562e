"""Few-shot sampling and base/new class subsets (CoOp / Dassl semantics, without disk caches)."""
from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import replace

from clipcore.config import ConfigError

from .records import DatasetSplits, Datum

SUBSETS = ("all", "base", "new")


def group_by_label(items: Iterable[Datum]) -> dict[int, list[Datum]]:
    """Items grouped by label, labels in order of first appearance (dicts keep insertion order)."""
    groups: dict[int, list[Datum]] = {}
    for datum in items:
        groups.setdefault(datum.label, []).append(datum)
    return groups


def sample_few_shot(items: Iterable[Datum], num_shots: int, seed: int) -> list[Datum]:
    """Up to `num_shots` items per class, without repetition, deterministic in `seed`.

    Each class draws from its own `random.Random` seeded by (seed, label), so the draw neither
    reads nor advances the global RNG, and a class's shots do not depend on which other classes
    are present. Classes with fewer than `num_shots` items keep all of them. Nothing is cached
    to disk (the reference's pickle cache made the data depend on filesystem state).
    `num_shots <= 0` returns all items unchanged.
    """
    items = list(items)
    if num_shots <= 0:
        return items
    sampled: list[Datum] = []
    for label, group in group_by_label(items).items():
        if len(group) <= num_shots:
            sampled.extend(group)
            continue
        # A str seed is hashed with sha512 by `random`, so it is stable across runs and versions.
        rng = random.Random(f"few-shot/seed={seed}/label={label}")
        sampled.extend(rng.sample(group, num_shots))
    return sampled


def base_new_labels(train: Iterable[Datum]) -> tuple[list[int], list[int]]:
    """Sorted train labels split in two: first ceil(n/2) are base, the rest new."""
    labels = sorted({datum.label for datum in train})
    m = math.ceil(len(labels) / 2)
    return labels[:m], labels[m:]


def _relabel(items: list[Datum], mapping: dict[int, int]) -> list[Datum]:
    return [replace(d, label=mapping[d.label]) for d in items if d.label in mapping]


def subsample_classes(splits: DatasetSplits, which: str) -> DatasetSplits:
    """Keep the base or new half of the classes (`which` in 'all', 'base', 'new').

    The halves are defined on the labels present in the train split (sorted, base = first
    ceil(n/2)); the same classes are kept in train/val/test and relabelled 0.. in order.
    `which='all'` returns `splits` unchanged.
    """
    if which not in SUBSETS:
        raise ConfigError(f"unknown class subset {which!r}; expected one of {SUBSETS}")
    if which == "all":
        return splits
    base, new = base_new_labels(splits.train)
    selected = base if which == "base" else new
    mapping = {old: new_label for new_label, old in enumerate(selected)}
    return DatasetSplits(
        train=_relabel(splits.train, mapping),
        val=_relabel(splits.val, mapping),
        test=_relabel(splits.test, mapping),
        classnames=[splits.classnames[old] for old in selected],
    )
