"""Rank-aware samplers whose order is a pure function of (seed, epoch), resumable mid-epoch.

A training run must be reproducible from a checkpoint taken at any step, with or without
DataLoader workers. Three things make that hold:

- the order of epoch ``e`` comes from a generator seeded by (seed, e), never the global RNG;
- every draw carries its own augmentation seed (:class:`SampleKey`), so the random crops and
  flips of an image depend on (seed, epoch, rank, position) and not on which worker process,
  or which attempt of the run, happens to transform it (:func:`augmentation_rng`);
- :meth:`ResumableSampler.resume_at` skips the draws a checkpointed run had already consumed
  in its epoch, while ``len()`` keeps the full epoch length the training loop counts against.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Iterator
from typing import NamedTuple, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler


def world_and_rank() -> tuple[int, int]:
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


class SampleKey(NamedTuple):
    """What a training sampler yields: the dataset position and the seed of its augmentations."""

    index: int
    seed: int


def sample_seeds(seed: int, epoch: int, rank: int, count: int) -> list[int]:
    """``count`` independent 63-bit augmentation seeds of (seed, epoch, rank), one per draw."""
    sequence = np.random.SeedSequence([seed, epoch, rank], spawn_key=(0x5A4D,))
    return [int(s >> np.uint64(1)) for s in sequence.generate_state(count, dtype=np.uint64)]


def split_key(key) -> tuple[int, Optional[int]]:
    """``(position, augmentation seed or None)`` of what a sampler yielded (a key or an int)."""
    if isinstance(key, SampleKey):
        return key.index, key.seed
    return int(key), None


@contextlib.contextmanager
def augmentation_rng(seed: Optional[int]):
    """Run the transform of one draw on torch's CPU generator seeded by ``seed``, restoring the
    generator afterwards (``None``: unseeded, e.g. deterministic evaluation transforms)."""
    if seed is None:
        yield
        return
    # Only the CPU generator: ``torch.manual_seed`` would also seed every accelerator backend,
    # 250 us per draw on a machine without one, more than the transform of a small image.
    generator = torch.default_generator
    state = generator.get_state()
    generator.manual_seed(seed)
    try:
        yield
    finally:
        generator.set_state(state)


class ResumableSampler(Sampler):
    """Base of the epoch samplers: ``set_epoch``, per-draw seeds and mid-epoch resume.

    Subclasses implement :meth:`indices` (this rank's dataset positions for ``self.epoch``) and
    :meth:`__len__` (their full count).
    """

    def __init__(self, seed: int, rank: int, keyed: bool):
        self.seed = int(seed)
        self.rank = int(rank)
        self.keyed = keyed
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch; a pending resume applies only to the epoch it was set for."""
        if int(epoch) != self.epoch:
            self._skip = 0
        self.epoch = int(epoch)

    def resume_at(self, epoch: int, skip: int) -> None:
        """Start at epoch ``epoch`` with its first ``skip`` draws (on this rank) left out, once."""
        if skip < 0:
            raise ValueError(f"skip must be >= 0, got {skip}")
        self.epoch, self._skip = int(epoch), int(skip)

    def indices(self) -> list[int]:
        raise NotImplementedError

    def __iter__(self) -> Iterator:
        indices = self.indices()
        start, self._skip = self._skip, 0
        if not self.keyed:
            return iter(indices[start:])
        seeds = sample_seeds(self.seed, self.epoch, self.rank, len(indices))
        return iter([SampleKey(i, s) for i, s in zip(indices[start:], seeds[start:])])


class EpochSeededSampler(ResumableSampler):
    """Shuffled (or sequential) indices, split across ranks like `DistributedSampler`.

    The permutation of epoch `e` comes from a `torch.Generator` seeded by (seed, e) and never
    touches the global RNG, so a resumed run replays the same order. With several replicas each
    rank takes `indices[rank::num_replicas]`; the list is first padded by wrapping around
    (`pad=True`, every rank gets the same count, as DDP training needs) or cut to a multiple of
    `num_replicas` (`drop_last=True`). `pad=False` gives uneven, non-overlapping shards, so each
    item is visited exactly once overall (for evaluation). When `num_replicas`/`rank` are None
    they are read from `torch.distributed` if initialised, else 1/0. `keyed=True` yields
    :class:`SampleKey` (training), else plain positions (evaluation).
    """

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True,
                 num_replicas: int | None = None, rank: int | None = None,
                 drop_last: bool = False, pad: bool = True, keyed: bool = False):
        world, world_rank = world_and_rank()
        num_replicas = world if num_replicas is None else int(num_replicas)
        rank = world_rank if rank is None else int(rank)
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"invalid rank {rank} for {num_replicas} replicas")
        super().__init__(seed, rank, keyed)
        self.num_replicas = num_replicas
        self.n = int(n)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.pad = pad

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
