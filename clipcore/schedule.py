"""Per-epoch learning-rate schedules shared by the methods.

Both references step their schedulers once per epoch: Dassl's constant warm-up then cosine
(kdpl spec 0) and SpectralGCD's cosine with a floor (spectralgcd spec 5). Expressed as a
``LambdaLR`` of the epoch, a resumed run recomputes the rate from the restored epoch, so the
first resumed epoch gets the right rate (the SpectralGCD reference resets it to the base rate).
"""
from __future__ import annotations

import math

import torch


def epoch_lr(epoch: int, base_lr: float, total_epochs: int, warmup_epochs: int = 0,
             warmup_lr: float = 0.0, eta_min: float = 0.0) -> float:
    """Rate of 0-based ``epoch``: ``warmup_lr`` during warm-up, then
    ``eta_min + (base_lr - eta_min) * (1 + cos(pi * (epoch - warmup_epochs) / total_epochs)) / 2``."""
    if epoch < warmup_epochs:
        return warmup_lr
    progress = (epoch - warmup_epochs) / max(1, total_epochs)
    return eta_min + (base_lr - eta_min) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_epoch_scheduler(optimizer: torch.optim.Optimizer, total_epochs: int, warmup_epochs: int = 0,
                           warmup_lr: float = 0.0, eta_min_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """One ``epoch_lr`` per parameter group (each group keeps its own base rate)."""
    lambdas = []
    for group in optimizer.param_groups:
        base = group["lr"]

        def factor(epoch: int, base: float = base) -> float:
            return epoch_lr(epoch, base, total_epochs, warmup_epochs, warmup_lr, base * eta_min_ratio) / base

        lambdas.append(factor)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
