"""Gaussian prompt aggregation (GPA) of PromptSRC (spec kdpl.md §1.5, invariant 12).

After epoch e (1-based) the learned tensors are accumulated with weight w_e ∝ N(e; μ, σ),
normalised over e = 1..E; after the last epoch the aggregate replaces the learned tensors.
Unlike the reference, only the learned tensors are aggregated (it averages the whole fp16
state dict, frozen CLIP included, and deep-copies the model every epoch), the sum is kept in
float64 (w_1 is ~1e-43 for μ=15, σ=1), and the accumulator is checkpointable so that a resumed
run aggregates exactly what an uninterrupted one would.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import Tensor


def gaussian_weights(epochs: int, mu: float, sigma: float) -> Tensor:
    """`[epochs]` float64 weights w_e ∝ exp(-(e-μ)²/2σ²) for e = 1..epochs, summing to 1."""
    if epochs < 1 or sigma <= 0:
        raise ValueError(f"need epochs >= 1 and sigma > 0, got epochs={epochs}, sigma={sigma}")
    e = torch.arange(1, epochs + 1, dtype=torch.float64)
    density = torch.exp(-0.5 * ((e - mu) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    return density / density.sum()


class PromptAggregator:
    """Accumulates w_e · learned_state after each epoch; `aggregate()` gives the GPA tensors."""

    def __init__(self, epochs: int, mu: float, sigma: float):
        self.epochs, self.mu, self.sigma = int(epochs), float(mu), float(sigma)
        self.weights = gaussian_weights(self.epochs, self.mu, self.sigma)
        self.sums: dict[str, Tensor] = {}
        self.epochs_seen: list[int] = []

    def update(self, epoch: int, state: Mapping[str, Tensor]) -> None:
        """Add the learned tensors at the end of `epoch` (1-based) with weight w_epoch.

        An epoch is accepted once: a resumed run that replays the end of an epoch does not
        count it twice.
        """
        if not 1 <= epoch <= self.epochs:
            raise ValueError(f"epoch must be in [1, {self.epochs}], got {epoch}")
        if epoch in self.epochs_seen:
            raise ValueError(f"epoch {epoch} was already aggregated")
        if self.sums and set(state) != set(self.sums):
            raise KeyError(f"learned tensors changed between epochs: {sorted(set(state) ^ set(self.sums))}")
        weight = float(self.weights[epoch - 1])
        for key, value in state.items():
            value = value.detach().to(device="cpu", dtype=torch.float64)
            self.sums[key] = self.sums[key] + weight * value if key in self.sums else weight * value
        self.epochs_seen.append(epoch)

    @property
    def complete(self) -> bool:
        return len(self.epochs_seen) == self.epochs

    def aggregate(self, like: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Σ_e w_e·θ_e / Σ_seen w_e (the reference's Σ_e w_e·θ_e once all epochs are in).

        `like` gives the dtype/device of each output tensor (fp32 CPU otherwise).
        """
        if not self.epochs_seen:
            raise RuntimeError("no epoch has been aggregated yet")
        total = float(sum(self.weights[e - 1] for e in self.epochs_seen))
        out = {}
        for key, value in self.sums.items():
            ref = like[key] if like is not None else None
            mean = value / total
            out[key] = mean.to(dtype=ref.dtype, device=ref.device) if ref is not None else mean.float()
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "mu": self.mu, "sigma": self.sigma,
                "epochs_seen": list(self.epochs_seen), "sums": {k: v.clone() for k, v in self.sums.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore an accumulator; refuses one made with other (epochs, μ, σ)."""
        setup = (int(state["epochs"]), float(state["mu"]), float(state["sigma"]))
        if setup != (self.epochs, self.mu, self.sigma):
            raise ValueError(f"GPA state was made for (epochs, mu, sigma)={setup}, "
                             f"this run uses {(self.epochs, self.mu, self.sigma)}")
        self.epochs_seen = [int(e) for e in state["epochs_seen"]]
        self.sums = {k: v.to(dtype=torch.float64, device="cpu").clone() for k, v in state["sums"].items()}
