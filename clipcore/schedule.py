"""Optimisers and learning-rate schedules shared by the methods.

Both main references step their schedulers once per epoch: Dassl's constant warm-up then cosine
(kdpl spec 0) and SpectralGCD's cosine with a floor (spectralgcd spec 5). CLIP-LoRA steps a
cosine once per iteration over a fixed iteration budget, with AdamW (``optim.name: adamw``,
``optim.interval: step``). Expressed as a ``LambdaLR`` of the epoch (or step), a resumed run
recomputes the rate from the restored position, so the first resumed epoch gets the right rate
(the SpectralGCD reference resets it to the base rate).
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


OPTIMIZERS = ("sgd", "adamw")
INTERVALS = ("epoch", "step")


def optimizer_with_schedule(groups: dict[str, list], optim, max_epochs: int, max_steps: int = -1):
    """The optimiser over named parameter groups plus its schedule, from the ``optim`` section.

    SGD with momentum (the default) or AdamW (``optim.betas``); the cosine runs over the epochs
    (``optim.interval: epoch``, ``trainer.max_epochs``) or over the steps (``step``,
    ``trainer.max_steps``), warm-up counted in the same unit. Every group trains at ``optim.lr``
    unless ``optim.group_lr`` gives it its own rate (GCD: ``{backbone: 0.005}``); naming a group
    the method does not have is an error. Empty groups (e.g. no trained backbone block) are left
    out. Returns Lightning's optimiser dict.
    """
    from clipcore.config import ConfigError

    if optim.name not in OPTIMIZERS:
        raise ConfigError(f"optim.name={optim.name!r}: expected one of {', '.join(OPTIMIZERS)}")
    if optim.interval not in INTERVALS:
        raise ConfigError(f"optim.interval={optim.interval!r}: expected one of {', '.join(INTERVALS)}")
    if optim.interval == "step" and max_steps <= 0:
        raise ConfigError("optim.interval=step schedules over trainer.max_steps: set it (e.g. trainer.max_steps=8000)")
    unknown = sorted(set(optim.group_lr) - set(groups))
    if unknown:
        raise ConfigError(f"optim.group_lr names parameter groups {unknown} that this method does not have "
                          f"(its groups: {', '.join(groups)})")
    named = [(name, [p for p in params if p.requires_grad]) for name, params in groups.items()]
    named = [(name, params) for name, params in named if params]
    if len(named) == 1 and not optim.group_lr:
        param_groups = named[0][1]  # one unnamed group: the LR monitor logs it as lr-SGD
    else:
        param_groups = [{"name": name, "params": params, "lr": optim.group_lr.get(name, optim.lr)}
                        for name, params in named]
    if optim.name == "sgd":
        optimizer = torch.optim.SGD(param_groups, lr=optim.lr, momentum=optim.momentum,
                                    weight_decay=optim.weight_decay)
    else:
        optimizer = torch.optim.AdamW(param_groups, lr=optim.lr, betas=tuple(optim.betas),
                                      weight_decay=optim.weight_decay)
    total = max_epochs if optim.interval == "epoch" else max_steps
    scheduler = cosine_epoch_scheduler(optimizer, total, optim.warmup_epochs, optim.warmup_lr, optim.eta_min_ratio)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": optim.interval}}
