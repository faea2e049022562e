"""Per-epoch learning curves of a run folder, read from the CSV logs every run writes.

A run's ``metrics/<attempt>/metrics.csv`` files (one per attempt: a resumed run has several) hold
the step-level training logs; a curve is the mean of each logged metric over the logged steps of
each epoch. A later attempt's rows replace an earlier attempt's for the epochs it repeats (the
earlier attempt was cut short inside them).
"""
from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

CURVE_METRICS = ("train/loss", "train/acc")


def _attempt_index(path: Path) -> int:
    return int(path.parent.name) if path.parent.name.isdigit() else -1


def epoch_curves(run_dir: Path, metrics: tuple[str, ...] = CURVE_METRICS) -> dict[str, list[float]]:
    """``{"epoch": [0, 1, ...], metric: [mean per epoch, ...]}`` for each metric the run logged
    (a metric absent from the logs, e.g. ``train/acc`` on pseudo-labels, is left out)."""
    per_epoch: dict[int, dict[str, list[float]]] = {}
    for csv_path in sorted(Path(run_dir).glob("metrics/*/metrics.csv"), key=_attempt_index):
        attempt: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        with open(csv_path, newline="") as fh:
            for row in csv.DictReader(fh):
                if not row.get("epoch"):
                    continue
                for metric in metrics:
                    if row.get(metric):
                        attempt[int(float(row["epoch"]))][metric].append(float(row[metric]))
        per_epoch.update({epoch: values for epoch, values in attempt.items() if values})
    epochs = sorted(per_epoch)
    curves: dict[str, list[float]] = {"epoch": epochs}
    for metric in metrics:
        if epochs and all(per_epoch[e].get(metric) for e in epochs):
            curves[metric] = [sum(per_epoch[e][metric]) / len(per_epoch[e][metric]) for e in epochs]
    return curves
