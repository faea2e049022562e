"""Classification scores as the community reports them, and per-image predictions.

Every classification method (zero-shot and the prompt learners) reports, per stage:

- ``<stage>/acc``: micro top-1 accuracy (the CoOp / KDPL tables);
- ``<stage>/acc_top5``: micro top-5 accuracy (top-``C`` when there are fewer than 5 classes);
- ``<stage>/mean_class_acc``: the mean over classes of each class's recall, over the classes
  that have test images (CLIP_benchmark's "mean per-class recall"; sklearn's
  ``balanced_accuracy_score``).

The test stage also keeps one row per image (dataset index, label, top-5 classes, the score of
the prediction); :func:`write_predictions` turns them into ``predictions.csv``. Under DDP each
rank scores its shard and the rows are gathered once at the end of the test epoch.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from torchmetrics import Metric

from clipcore.io import atomic_write

PREDICTIONS_FILE = "predictions.csv"
TOP_K = 5


class TopKAccuracy(Metric):
    """Micro top-k accuracy: the fraction of images whose label is among the k best logits
    (any number of classes, one included, unlike torchmetrics' MulticlassAccuracy)."""

    full_state_update = False

    def __init__(self, k: int):
        super().__init__()
        self.k = int(k)
        self.add_state("correct", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        top = logits.topk(min(self.k, logits.shape[-1]), dim=-1).indices
        self.correct += (top == target[:, None]).any(dim=-1).sum()
        self.total += target.numel()

    def compute(self) -> torch.Tensor:
        return self.correct.float() / self.total.clamp_min(1).float()


class MeanClassRecall(Metric):
    """Mean of per-class recall over the classes seen in the targets (sum-reduced counts)."""

    full_state_update = False

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = int(num_classes)
        self.add_state("correct", torch.zeros(self.num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("support", torch.zeros(self.num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        hit = (logits.topk(1, dim=-1).indices[:, 0] == target).long()  # ties broken as top-k
        self.support += torch.bincount(target, minlength=self.num_classes)
        self.correct += torch.bincount(target, weights=hit, minlength=self.num_classes).long()

    def compute(self) -> torch.Tensor:
        seen = self.support > 0
        if not bool(seen.any()):
            return torch.tensor(0.0)
        return (self.correct[seen].float() / self.support[seen].float()).mean()


class ClassificationScores(nn.Module):
    """The three metrics of one stage (torchmetrics objects, logged once per epoch)."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.acc = TopKAccuracy(1)
        self.acc_top5 = TopKAccuracy(TOP_K)
        self.mean_class_acc = MeanClassRecall(num_classes)

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, Metric]:
        for metric in (self.acc, self.acc_top5, self.mean_class_acc):
            metric(logits, labels)
        return {"acc": self.acc, "acc_top5": self.acc_top5, "mean_class_acc": self.mean_class_acc}


class PredictionRecorder:
    """Per-image rows of one test epoch: ``(index, label, top-5 classes, score)``."""

    def __init__(self):
        self.rows: list[torch.Tensor] = []

    def clear(self) -> None:
        self.rows = []

    def add(self, index: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor, probabilities: torch.Tensor) -> None:
        k = min(TOP_K, logits.shape[-1])
        top = logits.topk(k, dim=-1).indices
        score = probabilities.gather(1, top[:, :1])
        # One float64 row per image: exact for indices and labels up to 2**53.
        self.rows.append(torch.cat([index[:, None].double(), labels[:, None].double(), top.double(),
                                    score.double()], dim=1).cpu())

    def gathered(self, world_size: int) -> Optional[torch.Tensor]:
        """All ranks' rows sorted by dataset index (every rank gets them), or None if empty."""
        local = torch.cat(self.rows) if self.rows else torch.empty(0, 0, dtype=torch.float64)
        if world_size > 1:
            parts: list = [None] * world_size
            torch.distributed.all_gather_object(parts, local)
            local = torch.cat([p for p in parts if p.numel()]) if any(p.numel() for p in parts) else local
        if local.numel() == 0:
            return None
        return local[local[:, 0].argsort()]


def classification_eval_step(module, scores: ClassificationScores, logits: torch.Tensor, batch: dict,
                             stage: str, recorder: Optional[PredictionRecorder] = None,
                             probabilities: Optional[torch.Tensor] = None) -> None:
    """Update and log ``scores`` for one batch; record the test rows (probabilities: the model's own
    scoring of the logits, softmax unless given)."""
    labels = batch["label"]
    for name, metric in scores.update(logits, labels).items():
        module.log(f"{stage}/{name}", metric, on_epoch=True, prog_bar=name == "acc", batch_size=len(labels))
    if recorder is not None:
        probabilities = logits.float().softmax(dim=-1) if probabilities is None else probabilities
        recorder.add(batch["index"], labels, logits.detach(), probabilities.detach())


def write_predictions(path: Path, rows: torch.Tensor, items, classnames: list[str]) -> Path:
    """``predictions.csv``: path, label, prediction, top-5 classes (``|``-separated, best first)
    and the score of the prediction, one row per test image in dataset order."""
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as handle:
            out = csv.writer(handle)
            out.writerow(["path", "label", "prediction", "top5", "score"])
            for row in rows.tolist():
                index, label, top, score = int(row[0]), int(row[1]), [int(t) for t in row[2:-1]], row[-1]
                out.writerow([items[index].path, classnames[label], classnames[top[0]],
                              "|".join(classnames[t] for t in top), f"{score:.6f}"])

    atomic_write(path, write)
    return path
