"""UPL's pseudo-labels: zero-shot predictions on unlabelled training images, the K most
confident per class (tonyhuang2022/UPL, ``trainers/utils.py::select_top_k_similarity_per_class``).

The reference's rule, reproduced here:

1. every training image gets the softmax of the zero-shot logits (``exp(logit_scale) * cos``)
   of the labelling model; with several labellers (UPL*), their *probabilities* are averaged
   (``load_from_exist_file`` sums the stored softmax outputs and divides by the model count);
2. an image's pseudo-label is its argmax class and its confidence that class's probability;
3. images are ordered by confidence, most confident first, and each class keeps the first K of
   the images predicted as that class. A class predicted for fewer than K images keeps all of
   them; a class predicted for none gets no image (the reference neither tops up nor warns;
   we warn). ``K < 0`` keeps every image with its argmax label.

Ties: the reference orders with ``np.argsort(-confidence)`` (numpy's unstable quicksort), so
equal confidences come out in an unspecified order; here the sort is stable (equal confidences
keep the dataset order), and the argmax of equal probabilities is the lower class index.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

log = logging.getLogger(__name__)


@dataclass
class PseudoLabels:
    """The selected images: positions in the candidate list, their pseudo-labels and confidences."""

    positions: torch.Tensor    # [M] long, ascending
    labels: torch.Tensor       # [M] long
    confidence: torch.Tensor   # [M] float

    def accuracy(self, true_labels: torch.Tensor) -> float:
        """Fraction of the selected images whose pseudo-label is their true label."""
        if len(self.positions) == 0:
            return float("nan")
        return (true_labels[self.positions] == self.labels).float().mean().item()

    def per_class_counts(self, num_classes: int) -> torch.Tensor:
        return torch.bincount(self.labels, minlength=num_classes)


def select_top_k_per_class(confidence: torch.Tensor, predicted: torch.Tensor, k: int) -> PseudoLabels:
    """The reference's selection from each image's ``confidence`` (max probability) and
    ``predicted`` class (argmax): per class, its K most confident images (all when K < 0).
    Images with ``predicted < 0`` (unreadable, skipped) are never selected."""
    confidence = confidence.float().cpu()
    predicted = predicted.long().cpu()
    order = torch.sort(-confidence, stable=True).indices
    keep = torch.zeros(len(order), dtype=torch.bool)
    for cls in predicted.unique().tolist():
        if cls < 0:
            continue
        ranked = order[predicted[order] == cls]
        keep[ranked if k < 0 else ranked[:k]] = True
    positions = keep.nonzero().flatten()
    return PseudoLabels(positions, predicted[positions], confidence[positions])


def average_probabilities(probabilities: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(confidence, predicted)`` of the mean of several labellers' ``[N, C]`` probabilities;
    rows that are NaN (images that could not be read) get confidence -1 and class -1."""
    mean = torch.stack(probabilities).mean(dim=0) if len(probabilities) > 1 else probabilities[0]
    missing = mean.isnan().any(dim=-1)
    confidence, predicted = mean.nan_to_num(-1.0).max(dim=-1)
    confidence[missing], predicted[missing] = -1.0, -1
    return confidence, predicted


@torch.no_grad()
def zero_shot_probabilities(encoder, text_features: torch.Tensor, loader: DataLoader, count: int,
                            view=None) -> torch.Tensor:
    """``[count, C]`` softmax of ``exp(logit_scale) * cos(image, class)``, row ``i`` for the image
    whose batch ``index`` is ``i`` (NaN rows: images skipped as unreadable). ``view`` turns the
    batch into the encoder's input (None: unchanged)."""
    device = encoder.logit_scale.device
    classes = F.normalize(text_features.float().to(device), dim=-1)
    scale = encoder.logit_scale.exp().float()
    out = torch.full((count, classes.shape[0]), float("nan"))
    for batch in loader:
        if batch is None or batch.get("empty"):
            continue
        images = batch["image"].to(device)
        if view is not None:
            images = view(images)
        image = F.normalize(encoder.encode_image(images).float(), dim=-1)
        out[batch["index"].long()] = (scale * image @ classes.t()).softmax(dim=-1).cpu()
    return out
