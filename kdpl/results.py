"""Seed aggregation and result tables of the KDPL protocols (kdpl spec §4).

Pure functions: per-seed accuracies in, mean ± population std per cell out (as the reference's
``parse_test_res.py``), plus the dataset averages of each protocol:

- ``b2n``: per dataset Base, Novel (mean ± std over seeds) and HM of the two means; the
  ``average`` row is the mean Base and mean Novel over datasets and the HM of those means
  (the CoCoOp convention, not the mean of per-dataset HMs);
- ``xd`` / ``dg``: per target accuracy (mean ± std); ``average`` is the mean over the targets'
  means, the training (source) dataset excluded.

Accuracies are fractions in [0, 1]; the Markdown table shows percentages with two decimals.
"""
from __future__ import annotations

import csv
import io
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Optional

AVERAGE = "average"


@dataclass(frozen=True)
class SeedResult:
    """One accuracy of one seed. ``metric``: ``base``/``novel`` (b2n) or ``acc`` (xd, dg)."""

    method: str
    dataset: str
    metric: str
    seed: int
    value: float


@dataclass(frozen=True)
class Cell:
    """An aggregated table entry; ``std`` is ``None`` where it is not defined (HM, averages)."""

    method: str
    dataset: str
    metric: str
    mean: float
    std: Optional[float]
    n: int


def harmonic_mean(base: float, novel: float) -> float:
    """HM = 2BN/(B+N) (0 when both are 0)."""
    return 0.0 if base + novel == 0 else 2 * base * novel / (base + novel)


def _ordered(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def aggregate(protocol: str, results: Iterable[SeedResult], source: str = "imagenet") -> list[Cell]:
    """Cells of ``protocol``'s table, in first-seen method/dataset order, averages last per method.

    A (method, dataset, metric, seed) given twice is an error: it would count a seed twice.
    """
    if protocol not in ("b2n", "xd", "dg"):
        raise ValueError(f"unknown protocol {protocol!r}: expected b2n, xd or dg")
    results = list(results)
    values: dict[tuple[str, str, str], dict[int, float]] = defaultdict(dict)
    for r in results:
        seeds = values[(r.method, r.dataset, r.metric)]
        if r.seed in seeds:
            raise ValueError(f"duplicate result for {r.method} / {r.dataset} / {r.metric} / seed {r.seed}")
        seeds[r.seed] = float(r.value)
    cells: list[Cell] = []
    for method in _ordered(r.method for r in results):
        datasets = _ordered(r.dataset for r in results if r.method == method)
        per_dataset: dict[str, dict[str, Cell]] = {}
        for dataset in datasets:
            row = {}
            for metric in _ordered(r.metric for r in results if r.method == method and r.dataset == dataset):
                seed_values = list(values[(method, dataset, metric)].values())
                row[metric] = Cell(method, dataset, metric, statistics.fmean(seed_values),
                                   statistics.pstdev(seed_values), len(seed_values))
            per_dataset[dataset] = row
            cells.extend(row.values())
            if protocol == "b2n" and {"base", "novel"} <= set(row):
                cells.append(Cell(method, dataset, "hm", harmonic_mean(row["base"].mean, row["novel"].mean),
                                  None, min(row["base"].n, row["novel"].n)))
        cells.extend(_averages(protocol, method, per_dataset, source))
    return cells


def _averages(protocol: str, method: str, per_dataset: dict[str, dict[str, Cell]], source: str) -> list[Cell]:
    if protocol == "b2n":
        complete = [row for row in per_dataset.values() if {"base", "novel"} <= set(row)]
        if not complete:
            return []
        base = statistics.fmean(row["base"].mean for row in complete)
        novel = statistics.fmean(row["novel"].mean for row in complete)
        n = len(complete)
        return [Cell(method, AVERAGE, "base", base, None, n), Cell(method, AVERAGE, "novel", novel, None, n),
                Cell(method, AVERAGE, "hm", harmonic_mean(base, novel), None, n)]
    targets = [row["acc"].mean for name, row in per_dataset.items() if name != source and "acc" in row]
    if not targets:
        return []
    return [Cell(method, AVERAGE, "acc", statistics.fmean(targets), None, len(targets))]


def to_csv(cells: list[Cell]) -> str:
    """Long format: ``method,dataset,metric,mean,std,n`` (fractions, std empty where undefined)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["method", "dataset", "metric", "mean", "std", "n"])
    for c in cells:
        writer.writerow([c.method, c.dataset, c.metric, f"{c.mean:.6f}", "" if c.std is None else f"{c.std:.6f}", c.n])
    return out.getvalue()


def _fmt(cell: Optional[Cell]) -> str:
    if cell is None or math.isnan(cell.mean):
        return "–"
    text = f"{100 * cell.mean:.2f}"
    return text if cell.std is None else f"{text} ± {100 * cell.std:.2f}"


def to_markdown(protocol: str, cells: list[Cell], source: str = "imagenet") -> str:
    """A b2n table (one row per method and dataset: Base, Novel, HM, seeds) or an xd/dg table
    (one row per method, one column per dataset, source first, Average last)."""
    index = {(c.method, c.dataset, c.metric): c for c in cells}
    methods = _ordered(c.method for c in cells)
    if protocol == "b2n":
        lines = ["| Method | Dataset | Base | Novel | HM | Seeds |", "|---|---|---|---|---|---|"]
        for method in methods:
            for dataset in _ordered(c.dataset for c in cells if c.method == method):
                base, novel, hm = (index.get((method, dataset, m)) for m in ("base", "novel", "hm"))
                n = base.n if base else (novel.n if novel else 0)
                name = "**Average**" if dataset == AVERAGE else dataset
                seeds = f"{n} dataset{'s' * (n != 1)}" if dataset == AVERAGE else str(n)
                lines.append(f"| {method} | {name} | {_fmt(base)} | {_fmt(novel)} | {_fmt(hm)} | {seeds} |")
        return "\n".join(lines) + "\n"
    datasets = _ordered(c.dataset for c in cells if c.dataset != AVERAGE)
    datasets = ([source] if source in datasets else []) + [d for d in datasets if d != source]
    header = ["Method", *datasets, "Average"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in methods:
        row = [_fmt(index.get((method, d, "acc"))) for d in [*datasets, AVERAGE]]
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"
