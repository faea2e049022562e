"""Class selection and the symmetric KL of KDPL (spec kdpl.md §2.2-2.4, invariants §7.1-6).

Everything here is computed in fp32 whatever the input dtype: the reference computes the student
log-softmax in fp16, which loses precision on 20k-class dictionaries.

Selection runs on the logits' own device with ``torch.topk`` (no numpy round trip, no host
sync). Under DDP a caller that wants one class set for all ranks can all-reduce
:func:`mean_teacher_probs` (it is a mean, so averaging the per-rank means of equal-size batches
is exact) and then call :func:`topk_classes`; :func:`select_classes` is the per-rank shortcut that
matches the single-GPU reference.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "mean_teacher_probs",
    "topk_classes",
    "select_classes",
    "symmetric_kl",
    "teacher_logits",
]


def _check_2d(name: str, tensor: Tensor) -> None:
    if tensor.dim() != 2:
        raise ValueError(f"{name} must be [batch, classes], got shape {tuple(tensor.shape)}")


@torch.no_grad()
def mean_teacher_probs(teacher_logits: Tensor) -> Tensor:
    """Batch mean of the teacher's per-row softmax, ``[C]`` in fp32.

    The mean of softmaxes (not the softmax of the mean logits): one confident image can put a
    class in the top-K even if the other images ignore it, as in the reference.
    """
    _check_2d("teacher_logits", teacher_logits)
    return teacher_logits.detach().float().softmax(dim=-1).mean(dim=0)


@torch.no_grad()
def topk_classes(class_scores: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` largest entries of a ``[C]`` score vector; all ``C`` if ``k >= C``.

    The order of the returned indices is irrelevant to the loss (invariant 3); they are sorted
    by decreasing score here, whereas the reference's ``argpartition`` leaves them unsorted.
    """
    if class_scores.dim() != 1:
        raise ValueError(f"class_scores must be 1-D, got shape {tuple(class_scores.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    num_classes = class_scores.shape[0]
    if k >= num_classes:
        return torch.arange(num_classes, device=class_scores.device)
    return torch.topk(class_scores, k, dim=0, largest=True, sorted=True).indices


def select_classes(teacher_logits: Tensor, k: int) -> Tensor:
    """Top-``k`` classes of the batch-mean teacher softmax, as a LongTensor on the same device.

    Depends only on the teacher: the student never influences which classes are distilled.
    With ``k >= C`` it returns ``arange(C)`` (non class-agnostic KDPL: a no-op selection).
    """
    return topk_classes(mean_teacher_probs(teacher_logits), k)


def symmetric_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    alpha: float = 0.5,
    beta: float = 0.5,
) -> tuple[Tensor, Tensor, Tensor]:
    """KDPL loss ``alpha * KL(p_T || p_S) + beta * KL(p_S || p_T)`` with batch-mean reduction.

    Returns ``(loss, forward_kl, reverse_kl)``; the two KL terms are unweighted. Both KLs sum over
    classes and divide by the batch size (``reduction="batchmean"``, not a mean over B*C). The
    reverse term keeps the gradient through ``p_S`` on the target side, as the reference's
    ``F.kl_div(log_pT, log_pS, log_target=True)``. Teacher logits are constants (detached).
    """
    _check_2d("student_logits", student_logits)
    _check_2d("teacher_logits", teacher_logits)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            "student and teacher logits must have the same shape (select the teacher's columns "
            f"first): student {tuple(student_logits.shape)}, "
            f"teacher {tuple(teacher_logits.shape)}"
        )
    log_p_student = F.log_softmax(student_logits.float(), dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.detach().float(), dim=-1)
    forward_kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
    reverse_kl = F.kl_div(log_p_teacher, log_p_student, log_target=True, reduction="batchmean")
    loss = alpha * forward_kl + beta * reverse_kl
    return loss, forward_kl, reverse_kl


def teacher_logits(image_features: Tensor, text_features: Tensor, logit_scale) -> Tensor:
    """``exp(logit_scale) * normalize(image) @ normalize(text).T`` in fp32.

    ``logit_scale`` is log-space (the student's ``logit_scale`` Parameter in KDPL, so the teacher
    shares the student's temperature). Text features are normalised here, at use time, so a cache
    of raw teacher text features stays valid.
    """
    _check_2d("image_features", image_features)
    _check_2d("text_features", text_features)
    if image_features.shape[1] != text_features.shape[1]:
        raise ValueError(
            f"teacher image features have dim {image_features.shape[1]} but text features have "
            f"dim {text_features.shape[1]}"
        )
    image = F.normalize(image_features.float(), dim=-1)
    text = F.normalize(text_features.float(), dim=-1)
    scale = torch.as_tensor(logit_scale, device=image.device).float().exp()
    return scale * image @ text.t()
