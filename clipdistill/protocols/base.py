"""What a protocol is: cells (one training run, or zero-shot, per method x dataset x seed),
the evaluations of each, and how the per-seed results become a table.

A protocol is a registered subclass of :class:`Protocol`; ``clipdistill.protocols.runner``
trains (or reuses) every cell, evaluates it, and aggregates. A cell's training is an ordinary
run: the config files and overrides of :class:`Run` are exactly a ``train.py`` command line.
"""
from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from typing import ClassVar, Optional, Sequence

from clipcore.config import ConfigError
from clipdistill.app import CONFIG_DIR
from clipdistill.protocols.results import Cell, SeedResult

ZEROSHOT = {"zeroshot": "student", "zeroshot-teacher": "teacher"}


@dataclass(frozen=True)
class MethodSpec:
    """A method as the command line names it: ``coop``, ``coop+kdpl``, ``zeroshot-teacher``,
    ``spectralgcd``. ``variant``: the objective of a prompt learner, the evaluated backbone of
    zero-shot, empty otherwise."""

    label: str
    method: str
    variant: str = ""
    # Evaluated with test-time prompt tuning (``<method>@tpt``): every evaluation re-runs with
    # ``tpt.enabled=true`` on the cell's checkpoint.
    tpt: bool = False

    @property
    def trains(self) -> bool:
        return self.method != "zeroshot"


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of a cell's model: ``overrides`` select the dataset / class subset;
    ``metrics`` maps table metric -> metrics.json key. ``own``: the training run's final test
    metrics are this evaluation (read from ``<run>/eval/``), else it is computed once into
    ``<run>/eval/<name>/`` and read from there afterwards."""

    dataset: str
    name: str
    metrics: tuple[tuple[str, str], ...]
    overrides: tuple[str, ...] = ()
    own: bool = False


@dataclass(frozen=True, eq=False)
class Run:
    """A cell of a protocol: the run's config sources and its evaluations (compared by identity)."""

    protocol: str
    spec: MethodSpec
    dataset: str
    seed: int
    files: tuple[str, ...]
    overrides: tuple[str, ...]
    evaluations: tuple[Evaluation, ...] = field(default=())

    def config(self):
        from clipcore.config import load_config

        return load_config(list(self.files), list(self.overrides))

    def train_command(self) -> list[str]:
        """The ordinary command line that trains this cell (for any scheduler)."""
        return [sys.executable, "-m", "clipdistill.train", *self.train_arguments()]

    def train_arguments(self) -> list[str]:
        return [*[x for f in self.files for x in ("-c", f)], *self.overrides]

    def shell_command(self) -> str:
        return " ".join(shlex.quote(part) for part in self.train_command())


class Step:
    """Work a protocol needs done before its cells train (e.g. SpectralGCD's concept filtering):
    an ordinary command, skipped when its output exists."""

    def done(self) -> bool:
        raise NotImplementedError

    def command(self) -> list[str]:
        raise NotImplementedError

    def ensure(self) -> None:
        raise NotImplementedError

    def shell_command(self) -> str:
        return " ".join(shlex.quote(part) for part in self.command())


class Protocol:
    """Base class: subclasses set ``name``, ``default_datasets`` and implement ``runs``,
    ``aggregate`` and ``markdown``; ``prerequisites`` is optional."""

    name: ClassVar[str] = ""
    default_datasets: ClassVar[tuple[str, ...]] = ()
    default_methods: ClassVar[tuple[str, ...]] = ()

    def parse_method(self, label: str) -> MethodSpec:
        raise NotImplementedError

    def runs(self, methods: Sequence[str], datasets: Sequence[str], seeds: Sequence[int],
             files: Sequence[str], overrides: Sequence[str], source: str,
             data_roots: Optional[dict[str, str]] = None) -> list[Run]:
        """The cells; ``data_roots`` gives a dataset its own ``data.root``."""
        raise NotImplementedError

    def prerequisites(self, runs: list[Run]) -> list[Step]:
        return []

    def aggregate(self, results: list[SeedResult], source: str) -> list[Cell]:
        raise NotImplementedError

    def markdown(self, cells: list[Cell], source: str) -> str:
        raise NotImplementedError


def shipped(group: str, name: str) -> Optional[str]:
    path = CONFIG_DIR / group / f"{name}.yaml"
    return str(path) if path.is_file() else None


def require_shipped(group: str, name: str, label: str) -> str:
    path = shipped(group, name)
    if path is None:
        raise ConfigError(f"method {label!r}: no configs/{group}/{name}.yaml")
    return path
