"""Per-seed results and their aggregation into table cells (mean ± population std).

Pure functions: per-seed values in, cells out, as the reference's ``parse_test_res.py`` (kdpl)
and the papers' tables (GCD). A protocol adds its derived cells (base-to-novel's harmonic mean,
the dataset averages) and renders its own Markdown; the CSV layout is shared.
Values are fractions in [0, 1]; Markdown shows percentages with two decimals.
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
    """One value of one seed (``metric``: e.g. ``base``, ``acc``, ``transductive/all_v2``)."""

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


def ordered(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def seed_cells(results: Iterable[SeedResult]) -> dict[str, dict[str, dict[str, Cell]]]:
    """``{method: {dataset: {metric: Cell}}}`` in first-seen order; a (method, dataset, metric,
    seed) given twice is an error (it would count a seed twice)."""
    values: dict[tuple[str, str, str], dict[int, float]] = defaultdict(dict)
    order: dict[str, dict[str, list[str]]] = {}
    for r in results:
        seeds = values[(r.method, r.dataset, r.metric)]
        if r.seed in seeds:
            raise ValueError(f"duplicate result for {r.method} / {r.dataset} / {r.metric} / seed {r.seed}")
        seeds[r.seed] = float(r.value)
        metrics = order.setdefault(r.method, {}).setdefault(r.dataset, [])
        if r.metric not in metrics:
            metrics.append(r.metric)
    table: dict[str, dict[str, dict[str, Cell]]] = {}
    for method, datasets in order.items():
        for dataset, metrics in datasets.items():
            for metric in metrics:
                seed_values = list(values[(method, dataset, metric)].values())
                table.setdefault(method, {}).setdefault(dataset, {})[metric] = Cell(
                    method, dataset, metric, statistics.fmean(seed_values), statistics.pstdev(seed_values),
                    len(seed_values))
    return table


def mean_cell(method: str, metric: str, cells: list[Cell]) -> Cell:
    """The ``average`` row of ``metric``: the mean of the datasets' means."""
    return Cell(method, AVERAGE, metric, statistics.fmean(c.mean for c in cells), None, len(cells))


def to_csv(cells: list[Cell]) -> str:
    """Long format: ``method,dataset,metric,mean,std,n`` (fractions, std empty where undefined)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["method", "dataset", "metric", "mean", "std", "n"])
    for c in cells:
        writer.writerow([c.method, c.dataset, c.metric, f"{c.mean:.6f}", "" if c.std is None else f"{c.std:.6f}", c.n])
    return out.getvalue()


def fmt(cell: Optional[Cell]) -> str:
    if cell is None or math.isnan(cell.mean):
        return "–"
    text = f"{100 * cell.mean:.2f}"
    return text if cell.std is None else f"{text} ± {100 * cell.std:.2f}"
