"""The datamodule side of exact resume: where the training stream stood when a checkpoint was
taken, and the corrupt-image accounting shared by the classification and GCD datamodules."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Optional

import lightning as L
import torch

from .augment import TrainAugmentation
from .corrupt import CorruptImageTracker
from .pipeline import TrainImages, check_pipeline
from .readers import load_image
from .records import DataError, Datum
from .sampling import ResumableSampler


def training_position(trainer) -> dict[str, int]:
    """``{"epoch", "batches"}``: the epoch the next training batch belongs to and how many of its
    batches this rank has already consumed.

    Lightning counts ``processed`` epochs before ``on_train_epoch_end`` (where the epoch-end
    checkpoint is written) and ``completed`` after it, so ``processed > completed`` means the
    epoch is over and the next batch is the first of the following one.
    """
    epochs = trainer.fit_loop.epoch_progress.current
    if epochs.processed > epochs.completed:
        return {"epoch": int(epochs.processed), "batches": 0}
    return {"epoch": int(epochs.completed),
            "batches": int(trainer.fit_loop.epoch_loop.batch_progress.current.ready)}


class ResumableDataModule(L.LightningDataModule):
    """A datamodule whose training position travels in checkpoints (Lightning stores
    ``state_dict()`` in the checkpoint and calls ``load_state_dict`` before it asks for the
    training loader), and which drops and counts skipped corrupt images before batches move to
    the device."""

    def __init__(self, *, seed: int, skip_corrupt: bool = False, max_corrupt_fraction: float = 0.01,
                 pipeline: str = "cpu", cache_memory_fraction: float = 0.5):
        super().__init__()
        self.seed = int(seed)
        self.skip_corrupt = skip_corrupt
        self.max_corrupt_fraction = float(max_corrupt_fraction)
        self.corrupt: Optional[CorruptImageTracker] = None
        self._resume: Optional[dict[str, int]] = None
        self.pipeline = check_pipeline(pipeline)
        self.cache_memory_fraction = float(cache_memory_fraction)
        # The training images' cache and device augmentation (``cached`` and ``gpu`` pipelines).
        self.train_images: Optional[TrainImages] = None

    # -- resume -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        trainer = self.trainer
        if trainer is None or trainer.fit_loop is None:
            return {}
        return {"position": training_position(trainer)}

    def load_state_dict(self, state: dict) -> None:
        self._resume = state.get("position")

    def position_sampler(self, sampler: ResumableSampler, batch_size: int) -> ResumableSampler:
        """Apply a restored position to a fresh training sampler (once)."""
        if self._resume is not None:
            sampler.resume_at(self._resume["epoch"], self._resume["batches"] * batch_size)
            self._resume = None
        return sampler

    def loader_generator(self) -> torch.Generator:
        """Workers' base seeds come from here, never from the global RNG: creating a loader
        iterator then changes nothing that a resumed run would have to replay."""
        return torch.Generator().manual_seed(self.seed)

    # -- corrupt images -----------------------------------------------------------------------
    def split_sizes(self) -> dict[str, int]:
        raise NotImplementedError

    def setup(self, stage: Optional[str] = None) -> None:
        if self.skip_corrupt and self.corrupt is None:
            self.corrupt = CorruptImageTracker(self.split_sizes(), self.max_corrupt_fraction)

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        if self.corrupt is not None:
            batch = self.corrupt.record(batch)[0]
        return self.train_images.on_device(batch) if self.train_images is not None else batch

    # -- input pipelines ----------------------------------------------------------------------
    def make_train_images(self, augmentation: TrainAugmentation, key: str, load: Callable = load_image,
                          custom_transform: bool = False) -> Optional[TrainImages]:
        """The ``cached`` / ``gpu`` pipeline's train images (None under ``cpu``)."""
        if self.pipeline == "cpu":
            return None
        if custom_transform:
            raise DataError(f"data.pipeline={self.pipeline} applies the built-in train augmentation; "
                            f"a custom train transform needs data.pipeline=cpu")
        return TrainImages(self.pipeline, augmentation, key=key, load=load, skip_corrupt=self.skip_corrupt)

    def prepare_train_images(self, items: Sequence[Datum], threads: int) -> int:
        """Cache the training images (on the training device under ``gpu``); the loader's worker
        count: none under ``gpu``, where the loader only draws crop boxes."""
        if self.train_images is None:
            return threads
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        self.train_images.prepare(items, device, self.cache_memory_fraction, threads)
        return threads if self.train_images.workers_needed else 0
