"""Rank-aware sampler whose order is a pure function of (seed, epoch)."""
from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def epoch_generator_seed(seed: int, epoch: int) -> int:
    """Hash (seed, epoch) into a 32-bit generator seed.

    Unlike DistributedSampler's `seed + epoch`, (0, 1) and (1, 0) differ. Hashing rather than
    bit-packing matters: torch's CPU generator keeps only the low 32 bits of its seed.
    """
    digest = hashlib.sha256(f"epoch-sampler/{seed}/{epoch}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


class EpochSeededSampler(Sampler[int]):
    """Shuffled (or sequential) indices, split across ranks like `DistributedSampler`.

    The permutation of epoch `e` comes from a `torch.Generator` seeded by (seed, e) and never
    touches the global RNG, so a resumed run replays the same order. With several replicas each
    rank takes `indices[rank::num_replicas]`; the list is first padded by wrapping around
    (`pad=True`, every rank gets the same count, as DDP training needs) or cut to a multiple of
    `num_replicas` (`drop_last=True`). `pad=False` gives uneven, non-overlapping shards, so each
    item is visited exactly once overall (for evaluation). When `num_replicas`/`rank` are None
    they are read from `torch.distributed` if initialised, else 1/0.
    """

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True,
                 num_replicas: int | None = None, rank: int | None = None,
                 drop_last: bool = False, pad: bool = True):
        world, world_rank = _world()
        self.num_replicas = world if num_replicas is None else int(num_replicas)
        self.rank = world_rank if rank is None else int(rank)
        if self.num_replicas < 1 or not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"invalid rank {self.rank} for {self.num_replicas} replicas")
        self.n = int(n)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.pad = pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _total_size(self) -> int:
        if self.drop_last:
            return (self.n // self.num_replicas) * self.num_replicas
        if self.pad:
            return math.ceil(self.n / self.num_replicas) * self.num_replicas
        return self.n

    def __len__(self) -> int:
        total = self._total_size()
        if self.drop_last or self.pad:
            return total // self.num_replicas
        return len(range(self.rank, total, self.num_replicas))

    def indices(self) -> list[int]:
        """This rank's indices for the current epoch."""
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(epoch_generator_seed(self.seed, self.epoch))
            order = torch.randperm(self.n, generator=generator).tolist()
        else:
            order = list(range(self.n))
        total = self._total_size()
        if total > len(order) and order:
            repeats = math.ceil((total - len(order)) / len(order))
            order = order + (order * repeats)[: total - len(order)]
        order = order[:total]
        return order[self.rank:total:self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices())
