"""Hungarian-matched clustering accuracy for generalized category discovery (spec §7).

Notation: w[p, c] = number of samples with predicted cluster p and true class c, a D×D
count matrix with D = max(max pred, max true) + 1. A matching π (true class c -> cluster
π(c)) is found with ``linear_sum_assignment(w.max() - w)``, i.e. it maximises Σ_c w[π(c), c].

- ``v2`` (SimGCD/GET/SpectralGCD, the reported metric): one matching over all samples;
  All = Σ_c w[π(c), c] / N, Old = Σ_{c ∈ old} w[π(c), c] / #old samples, New likewise.
- ``v1`` (GCD): separate matchings on the old subset and on the new subset;
  All = f·Old + (1 − f)·New with f the fraction of old samples. More lenient: a cluster may
  be matched to an old class and to a new class at once.

``old_mask`` is per sample: True where the sample's ground-truth class is a known (old) one.
An empty old or new subset scores 0.0 for that part (the reference divides by zero).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat


def _as_int_array(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values).reshape(-1)
    if array.size and array.min() < 0:
        raise ValueError("labels and predictions must be non-negative integers")
    return array.astype(np.int64)


def count_matrix(y_true, y_pred, size: int | None = None) -> np.ndarray:
    """w[p, c] = #{i : y_pred_i = p, y_true_i = c}, shape D×D (vectorised with bincount)."""
    y_true, y_pred = _as_int_array(y_true), _as_int_array(y_pred)
    if y_true.size != y_pred.size:
        raise ValueError(f"{y_true.size} labels but {y_pred.size} predictions")
    if size is None:
        size = int(max(y_pred.max(), y_true.max())) + 1
    return np.bincount(y_pred * size + y_true, minlength=size * size).reshape(size, size)


def hungarian_match(w: np.ndarray) -> np.ndarray:
    """cluster_of[c] = π(c), the cluster matched to true class c, maximising Σ_c w[π(c), c]."""
    rows, cols = linear_sum_assignment(w.max() - w)
    cluster_of = np.empty(w.shape[1], dtype=np.int64)
    cluster_of[cols] = rows
    return cluster_of


def cluster_acc(y_true, y_pred) -> float:
    """Plain Hungarian accuracy: max over one-to-one maps of the fraction of matched samples."""
    y_true, y_pred = _as_int_array(y_true), _as_int_array(y_pred)
    if y_true.size == 0:
        return 0.0
    w = count_matrix(y_true, y_pred)
    cluster_of = hungarian_match(w)
    return float(w[cluster_of, np.arange(w.shape[1])].sum() / y_true.size)


def _split_inputs(y_true, y_pred, old_mask) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat int labels, int predictions and a bool old-class mask, checked to be the same length."""
    y_true, y_pred = _as_int_array(y_true), _as_int_array(y_pred)
    old_mask = np.asarray(torch.as_tensor(old_mask).cpu(), dtype=bool).reshape(-1)
    if not y_true.size == y_pred.size == old_mask.size:
        raise ValueError("y_true, y_pred and old_mask must have the same length")
    return y_true, y_pred, old_mask


def split_cluster_acc_v2(y_true, y_pred, old_mask) -> tuple[float, float, float]:
    """(All, Old, New) with one Hungarian matching over all samples (the reported metric)."""
    y_true, y_pred, old_mask = _split_inputs(y_true, y_pred, old_mask)
    if y_true.size == 0:
        return 0.0, 0.0, 0.0
    w = count_matrix(y_true, y_pred)
    cluster_of = hungarian_match(w)
    classes = np.arange(w.shape[1])
    matched = w[cluster_of, classes]          # correctly matched samples per true class
    support = w.sum(0)                          # samples per true class
    total = float(matched.sum() / y_true.size)

    def part(mask: np.ndarray) -> float:
        # As the reference: the classes seen among the masked samples, all of their samples.
        present = np.zeros(w.shape[1], dtype=bool)
        present[np.unique(y_true[mask])] = True
        count = support[present].sum()
        return float(matched[present].sum() / count) if count else 0.0

    return total, part(old_mask), part(~old_mask)


def split_cluster_acc_v1(y_true, y_pred, old_mask) -> tuple[float, float, float]:
    """(All, Old, New) with separate matchings on old and new samples; All is their
    sample-weighted mean."""
    y_true, y_pred, old_mask = _split_inputs(y_true, y_pred, old_mask)
    if y_true.size == 0:
        return 0.0, 0.0, 0.0
    weight = old_mask.mean()
    old = cluster_acc(y_true[old_mask], y_pred[old_mask])
    new = cluster_acc(y_true[~old_mask], y_pred[~old_mask])
    return float(weight * old + (1 - weight) * new), old, new


def matched_predictions(y_true, y_pred) -> np.ndarray:
    """Predictions relabelled into class ids by the v2 matching (unmatched clusters -> -1)."""
    y_true, y_pred = _as_int_array(y_true), _as_int_array(y_pred)
    w = count_matrix(y_true, y_pred)
    class_of = np.full(w.shape[0], -1, dtype=np.int64)
    class_of[hungarian_match(w)] = np.arange(w.shape[1])
    return class_of[y_pred]


def confusion_matrix(y_true, y_pred_matched, num_classes: int | None = None) -> np.ndarray:
    """cm[t, p] = #{i : y_true_i = t, y_pred_i = p} (rows true, columns predicted).

    Predictions of -1 (clusters matched to no class) are not counted."""
    y_true = _as_int_array(y_true)
    y_pred = np.asarray(torch.as_tensor(y_pred_matched).cpu()).reshape(-1).astype(np.int64)
    keep = y_pred >= 0
    if num_classes is None:
        num_classes = int(max(y_true.max(initial=-1), y_pred.max(initial=-1))) + 1
    flat = y_true[keep] * num_classes + y_pred[keep]
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def plot_confusion(cm: np.ndarray, path: str | os.PathLike, *, num_old: int | None = None,
                   class_names: Sequence[str] | None = None, normalize: bool = True,
                   title: str = "confusion (Hungarian-matched)") -> Path:
    """PNG of a (row-normalised) confusion matrix; ``num_old`` draws the old/new boundary."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from clipcore.io import atomic_write

    cm = np.asarray(cm, dtype=np.float64)
    if normalize:
        cm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    side = min(4 + 0.12 * cm.shape[0], 24)
    fig = Figure(figsize=(side + 1.5, side))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    image = ax.imshow(cm, cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046)
    if num_old is not None:
        for line in (ax.axhline, ax.axvline):
            line(num_old - 0.5, color="white", lw=0.8)
    if class_names is not None and len(class_names) <= 50:
        ax.set_xticks(range(len(class_names)), class_names, rotation=90, fontsize=6)
        ax.set_yticks(range(len(class_names)), class_names, fontsize=6)
    ax.set(xlabel="predicted (matched)", ylabel="true", title=title)
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


class GCDAccuracy(Metric):
    """All/Old/New accuracy (v2 and v1) over a whole split, gathered across ranks first.

    ``update(preds, target, old_mask)`` takes cluster ids ``[B]`` (or logits ``[B, C]``,
    argmax taken), true labels ``[B]`` and the per-sample old-class mask ``[B]``. The states
    are lists concatenated across processes (``dist_reduce_fx='cat'``), so one Hungarian
    matching sees every prediction: matching per rank and averaging would be wrong.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("preds", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")
        self.add_state("old_mask", default=[], dist_reduce_fx="cat")

    def update(self, preds: torch.Tensor, target: torch.Tensor, old_mask: torch.Tensor) -> None:
        if preds.ndim == 2:
            preds = preds.argmax(dim=1)
        if not preds.shape == target.shape == old_mask.shape:
            raise ValueError(f"preds {tuple(preds.shape)}, target {tuple(target.shape)} and "
                             f"old_mask {tuple(old_mask.shape)} must all be [B]")
        self.preds.append(preds.detach().long())
        self.targets.append(target.detach().long())
        # Stored as int64: gathering bool tensors is not supported by every backend.
        self.old_mask.append(old_mask.detach().long())

    def compute(self) -> dict[str, torch.Tensor]:
        # After a cross-process sync the list states arrive as concatenated tensors.
        if isinstance(self.preds, list) and not self.preds:
            raise RuntimeError("GCDAccuracy.compute() called before any update()")
        preds = dim_zero_cat(self.preds).cpu().numpy()
        targets = dim_zero_cat(self.targets).cpu().numpy()
        old = dim_zero_cat(self.old_mask).cpu().numpy().astype(bool)
        results = {}
        for name, fn in (("v2", split_cluster_acc_v2), ("v1", split_cluster_acc_v1)):
            for part, value in zip(("all", "old", "new"), fn(targets, preds, old)):
                results[f"{part}_{name}"] = torch.tensor(value, dtype=torch.float32)
        return results
