"""GCD losses with the exact semantics of SimGCD/GET/SpectralGCD (spec §4).

Every term is computed in fp32. Conventions: a batch of B images seen in ``n_views`` views is
laid out as ``[view1; view2; …]`` (n_views·B rows); ``labels`` and ``labelled_mask`` are
per image ([B]) and apply to every view.

Total (λ = ``sup_weight`` = 0.35, w = ``memax_weight``):

    L = (1−λ)(L_cluster + w·L_memax) + λ·L_cls + (1−λ)·L_con + λ·L_supcon + L_fwd + L_rev

with L_fwd, L_rev the SpectralGCD distillation terms (left out for SimGCD).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from gcd.config import GCDLossConfig


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor):
    """(forward, reverse) KL between row distributions, each a mean over rows.

    forward = mean_i KL(softmax(t_i) ‖ softmax(s_i)) = mean_i Σ_k q_ik (log q_ik − log p_ik)
    reverse = mean_i KL(softmax(s_i) ‖ softmax(t_i)) = mean_i Σ_k p_ik (log p_ik − log q_ik)

    As the reference (``F.kl_div(..., log_target=True, reduction='batchmean')`` with the
    arguments swapped for the reverse term), the gradient of ``reverse`` flows through the
    student in both places, so it equals the gradient of CE(p, q) − H(p). The teacher is
    a constant (detached).
    """
    log_p = F.log_softmax(student_logits.float(), dim=-1)
    log_q = F.log_softmax(teacher_logits.detach().float(), dim=-1)
    forward = F.kl_div(log_p, log_q, log_target=True, reduction="batchmean")
    reverse = F.kl_div(log_q, log_p, log_target=True, reduction="batchmean")
    return forward, reverse


def teacher_temperature_schedule(epoch: int, warmup_temp: float = 0.07, temp: float = 0.04,
                                 warmup_epochs: int = 30) -> float:
    """τ_t(e) = linspace(warmup_temp, temp, warmup_epochs)[e] for e < warmup_epochs, else temp.

    ``epoch`` is 0-based, so ``temp`` is first reached at e = warmup_epochs − 1.
    """
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    if epoch < warmup_epochs:
        return float(np.linspace(warmup_temp, temp, warmup_epochs)[epoch])
    return float(temp)


def self_distillation_loss(student_logits: torch.Tensor, epoch: int, n_views: int = 2,
                           student_temp: float = 0.1, warmup_temp: float = 0.07,
                           temp: float = 0.04, warmup_epochs: int = 30) -> torch.Tensor:
    """SimGCD's ``DistillLoss`` (L_cluster): sharpened predictions of one view teach the others.

    Student log p_v = log_softmax(ℓ_v/student_temp); teacher q_v = softmax(ℓ_v.detach()/τ_t(e)).
    L = (1/#pairs) Σ_{v≠u} mean_rows(−Σ_c q_v log p_u): only cross-view pairs count.
    """
    logits = student_logits.float()
    if logits.shape[0] % n_views:
        raise ValueError(f"{logits.shape[0]} rows do not split into {n_views} views")
    log_student = F.log_softmax(logits / student_temp, dim=-1).chunk(n_views)
    tau = teacher_temperature_schedule(epoch, warmup_temp, temp, warmup_epochs)
    teacher = F.softmax(logits.detach() / tau, dim=-1).chunk(n_views)
    total, pairs = logits.new_zeros(()), 0
    for t_view, q in enumerate(teacher):
        for s_view, log_p in enumerate(log_student):
            if s_view != t_view:
                total = total + torch.sum(-q * log_p, dim=-1).mean()
                pairs += 1
    return total / pairs


def mean_entropy_regularizer(logits: torch.Tensor) -> torch.Tensor:
    """L_memax = Σ_c p̄_c log p̄_c + log C = log C − H(p̄) ≥ 0, p̄ = mean_i softmax(logits_i).

    ``logits`` are already divided by the student temperature. Minimising it spreads the
    mean prediction over the C clusters (0 for a uniform p̄). ``xlogy`` makes 0·log 0 = 0,
    as the reference's ``log(p**(-p))`` does.
    """
    mean_probs = F.softmax(logits.float(), dim=-1).mean(dim=0)
    return torch.xlogy(mean_probs, mean_probs).sum() + math.log(mean_probs.numel())


def info_nce_logits(features: torch.Tensor, n_views: int = 2, temperature: float = 1.0):
    """SimCLR logits as in GCD/SimGCD: rows are [positive(s), negatives], target index 0.

    Features are L2-normalised; S = F Fᵀ with the diagonal removed; for each row the
    same-image entries (other views) come first, then the 2B−2 negatives in column order.
    Returns ``(logits / temperature, zeros)``.
    """
    rows = features.shape[0]
    if rows % n_views:
        raise ValueError(f"{rows} rows do not split into {n_views} views")
    image = torch.arange(rows // n_views, device=features.device).repeat(n_views)
    same = image.unsqueeze(0) == image.unsqueeze(1)
    feats = F.normalize(features.float(), dim=1)
    similarity = feats @ feats.T
    # Each row's columns without itself, positives (its other views) first, then negatives, each
    # in column order: the reference's boolean masks, as a gather whose size is known on the host
    # (a boolean mask makes the host wait for the device to count its elements).
    column = torch.arange(rows, device=features.device)
    group = torch.where(same, 0, 1).masked_fill_(column.unsqueeze(0) == column.unsqueeze(1), 2)
    order = (group * rows + column).argsort(dim=1)[:, :rows - 1]
    logits = similarity.gather(1, order) / temperature
    return logits, torch.zeros(rows, dtype=torch.long, device=features.device)


def supcon_loss(features: torch.Tensor, labels: torch.Tensor | None = None,
                temperature: float = 0.07, base_temperature: float = 0.07) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020), ``contrast_mode='all'``.

    ``features`` [n, V, d] (already normalised by the caller, as in SimGCD). With A the
    n·V anchors (views stacked), for anchor a with positives P(a) (same label, a excluded):
    ℓ_a = −(τ/τ_base) · mean_{p∈P(a)} log( exp(f_a·f_p/τ) / Σ_{b≠a} exp(f_a·f_b/τ) );
    the loss is the mean over anchors. Without labels, positives are the other views.
    """
    if features.ndim != 3:
        raise ValueError("features must be [n, views, dim]")
    n, views = features.shape[:2]
    device = features.device
    if labels is None:
        positive = torch.eye(n, dtype=torch.float32, device=device)
    else:
        labels = labels.reshape(-1, 1)
        if labels.shape[0] != n:
            raise ValueError(f"{labels.shape[0]} labels for {n} samples")
        positive = torch.eq(labels, labels.T).float()
    contrast = torch.cat(torch.unbind(features.float(), dim=1), dim=0)
    logits = contrast @ contrast.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()  # numerical stability
    positive = positive.repeat(views, views)
    not_self = 1.0 - torch.eye(n * views, device=device)
    positive = positive * not_self
    log_prob = logits - torch.log((torch.exp(logits) * not_self).sum(1, keepdim=True))
    mean_log_prob_pos = (positive * log_prob).sum(1) / positive.sum(1)
    return -(temperature / base_temperature) * mean_log_prob_pos.mean()


class GCDLoss:
    """The SimGCD/SpectralGCD objective with its settings (the ``gcd.loss`` section, with the
    per-dataset memax weight resolved), built once by the method builder."""

    def __init__(self, config: GCDLossConfig, n_views: int = 2):
        if config.memax_weight is None:
            raise ValueError("resolve the per-dataset memax weight first (gcd.config.memax_weight)")
        self.config = config
        self.n_views = n_views

    def __call__(self, proj, logits, labels, labelled_mask, epoch, *, student_rep=None,
                 teacher_rep=None, labelled_index=None) -> dict[str, torch.Tensor]:
        return gcd_total_loss(proj, logits, labels, labelled_mask, epoch, config=self.config,
                              n_views=self.n_views, student_rep=student_rep, teacher_rep=teacher_rep,
                              labelled_index=labelled_index)


def gcd_total_loss(proj: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
                   labelled_mask: torch.Tensor, epoch: int, *, config: GCDLossConfig | None = None,
                   n_views: int = 2, student_rep: torch.Tensor | None = None,
                   teacher_rep: torch.Tensor | None = None,
                   labelled_index: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """All terms and their weighted sum ``loss``, as the reference's training step.

    proj [V·B, d]: projection-head output (contrastive branch); logits [V·B, C]: cosine
    logits of the prototype layer; labels, labelled_mask [B] per image. student_rep and
    teacher_rep [V·B, K]: cross-modal representations for L_fwd/L_rev (both or neither).

    Returned terms are unweighted (``memax`` is L_memax, not w·L_memax); ``loss`` is the total.
    With no labelled image in the batch L_cls and L_supcon are 0 (the reference gets NaN).
    ``labelled_index``: the positions of ``labelled_mask`` (``GCDDataModule`` finds them on the
    host, before the batch moves: read from a device mask, they would be a host sync).
    """
    cfg = config or GCDLossConfig(memax_weight=1.0)
    views = n_views
    batch = labels.shape[0]
    if logits.shape[0] != views * batch or proj.shape[0] != views * batch:
        raise ValueError(f"expected {views}×{batch} rows in proj/logits, got "
                         f"{proj.shape[0]} and {logits.shape[0]}")
    if labelled_index is None:
        labelled_index = labelled_mask.bool().nonzero().squeeze(1)
    scaled = logits.float() / cfg.student_temp
    zero = logits.sum() * 0.0  # keeps the graph connected when a term is empty

    if labelled_index.numel():
        labelled_index = labelled_index.to(logits.device)
        sup_logits = torch.cat([chunk[labelled_index] for chunk in scaled.chunk(views)])
        sup_labels = labels[labelled_index].repeat(views)
        cls = F.cross_entropy(sup_logits, sup_labels)
        sup_proj = torch.stack([chunk[labelled_index] for chunk in proj.float().chunk(views)], 1)
        supcon = supcon_loss(F.normalize(sup_proj, dim=-1), labels[labelled_index],
                             cfg.supcon_temperature, cfg.supcon_temperature)
    else:
        cls = supcon = zero

    cluster = self_distillation_loss(logits, epoch, views, cfg.student_temp,
                                     cfg.warmup_teacher_temp, cfg.teacher_temp,
                                     cfg.warmup_teacher_temp_epochs)
    memax = mean_entropy_regularizer(scaled)
    con_logits, con_labels = info_nce_logits(proj, views, cfg.info_nce_temperature)
    contrastive = F.cross_entropy(con_logits, con_labels)

    lam = cfg.sup_weight
    total = ((1 - lam) * (cluster + cfg.memax_weight * memax) + lam * cls
             + (1 - lam) * contrastive + lam * supcon)
    terms = {"cls": cls, "cluster": cluster, "memax": memax, "contrastive": contrastive,
             "supcon": supcon}
    if (student_rep is None) != (teacher_rep is None):
        raise ValueError("pass both student_rep and teacher_rep for distillation, or neither")
    if student_rep is not None:
        forward, reverse = distill_kl(student_rep, teacher_rep)
        total = total + forward + reverse
        terms.update(distill_forward=forward, distill_reverse=reverse)
    terms["loss"] = total
    return terms
