"""The GCD train sampler: SimGCD's labelled/unlabelled re-weighting, made deterministic per
(seed, epoch) and rank-aware."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from clipcore.data.sampling import ResumableSampler, world_and_rank


def gcd_sample_weights(n_labelled: int, n_unlabelled: int) -> torch.Tensor:
    """Weight 1 per labelled item, `n_lab / n_unlab` per unlabelled item (labelled first), so
    that half of the probability mass is on each group (the reference's WeightedRandomSampler)."""
    unlabelled_weight = n_labelled / n_unlabelled if n_unlabelled else 0.0
    return torch.cat([torch.ones(n_labelled, dtype=torch.double),
                      torch.full((n_unlabelled,), unlabelled_weight, dtype=torch.double)])


class WeightedEpochSampler(ResumableSampler, DistributedSampler):
    """Draws `num_samples` indices with replacement from `gcd_sample_weights`, per epoch.

    The draw of (seed, epoch, rank) comes from its own `torch.Generator`, seeded through
    `numpy.random.SeedSequence(seed, spawn_key=(epoch, rank))`, so it is a pure function of
    those three numbers (a resumed run replays it; ranks draw statistically independent
    streams) and the global RNG is never touched. `num_samples` (default: the dataset size,
    as in the reference) is the total over all ranks; each rank draws `ceil(total / world)`.

    It subclasses `DistributedSampler` only so that Lightning recognises it as already
    distributed and neither replaces nor wraps it; Lightning calls `set_epoch` every epoch.
    `keyed=True` yields `SampleKey`s with per-draw augmentation seeds; `resume_at` skips the
    draws a checkpointed run already consumed (see `clipcore.data.sampling`).
    """

    def __init__(self, n_labelled: int, n_unlabelled: int, *, seed: int = 0,
                 num_samples: int | None = None, num_replicas: int | None = None,
                 rank: int | None = None, keyed: bool = False):
        # DistributedSampler.__init__ insists on an initialised process group: not called.
        world, world_rank = world_and_rank()
        num_replicas = world if num_replicas is None else int(num_replicas)
        rank = world_rank if rank is None else int(rank)
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"invalid rank {rank} for {num_replicas} replicas")
        ResumableSampler.__init__(self, seed, rank, keyed)
        self.num_replicas = num_replicas
        if n_labelled + n_unlabelled == 0 or n_labelled == 0 and n_unlabelled > 0:
            raise ValueError(f"need labelled items to weight against, got n_labelled="
                             f"{n_labelled}, n_unlabelled={n_unlabelled}")
        self.n_labelled, self.n_unlabelled = int(n_labelled), int(n_unlabelled)
        self.weights = gcd_sample_weights(self.n_labelled, self.n_unlabelled)
        self.total_size = int(num_samples if num_samples is not None else len(self.weights))
        self.num_samples = math.ceil(self.total_size / self.num_replicas)
        self.shuffle = True
        self.drop_last = False
        self.dataset = None

    def generator(self) -> torch.Generator:
        """The generator of this (seed, epoch, rank)."""
        sequence = np.random.SeedSequence(self.seed, spawn_key=(self.epoch, self.rank))
        generator = torch.Generator()
        generator.manual_seed(int(sequence.generate_state(1, dtype=np.uint64)[0] >> 1))
        return generator

    def indices(self) -> list[int]:
        """This rank's indices for the current epoch."""
        return torch.multinomial(self.weights, self.num_samples, replacement=True,
                                 generator=self.generator()).tolist()

    def __len__(self) -> int:
        return self.num_samples
