"""LightningDataModule for image classification over `DatasetSplits`."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.data import DataLoader

from .augment import dassl_augmentation
from .corrupt import collate_for
from .dataset import ImageDataset
from .records import DataError, DatasetSplits, Datum
from .resume import ResumableDataModule
from .sampling import EpochSeededSampler
from .transforms import build_transform


class ClassificationDataModule(ResumableDataModule):
    """Train/val/test loaders over a `DatasetSplits`.

    Training order comes from `EpochSeededSampler` (deterministic in (seed, epoch), split across
    ranks, one augmentation seed per draw, resumable mid-epoch), so the Trainer must be built
    with `use_distributed_sampler=False`; otherwise Lightning would wrap the sampler in a second
    DistributedSampler. Val/test are read sequentially, sharded across ranks without padding, so
    each image is evaluated exactly once overall.

    `drop_last=None` follows Dassl: drop the last incomplete batch iff this rank has at least one
    full batch (single process: `len(train) >= batch_size`). `val_dataloader` uses the val split,
    or the test split when val is empty (the CoOp protocols never use val).
    """

    def __init__(
        self,
        splits: DatasetSplits,
        *,
        batch_size: int = 32,
        eval_batch_size: int = 100,
        num_workers: int = 0,
        image_size: int = 224,
        mean: Sequence[float] | str | None = None,
        std: Sequence[float] | None = None,
        min_crop_scale: float = 0.08,
        train_transform: Callable | None = None,
        eval_transform: Callable | None = None,
        seed: int = 0,
        drop_last: bool | None = None,
        pin_memory: bool | None = None,
        skip_corrupt: bool = False,
        max_corrupt_fraction: float = 0.01,
        pipeline: str = "cpu",
        cache_memory_fraction: float = 0.5,
    ):
        super().__init__(seed=seed, skip_corrupt=skip_corrupt, max_corrupt_fraction=max_corrupt_fraction,
                         pipeline=pipeline, cache_memory_fraction=cache_memory_fraction)
        if not isinstance(splits, DatasetSplits):
            raise TypeError(f"splits must be DatasetSplits, got {type(splits).__name__}")
        self.splits = splits
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)
        self.num_workers = int(num_workers)
        self.drop_last = drop_last
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.train_transform = train_transform or build_transform(
            True, image_size, mean, std, min_crop_scale=min_crop_scale)
        self.eval_transform = eval_transform or build_transform(False, image_size, mean, std)
        self.train_images = self.make_train_images(dassl_augmentation(image_size, mean, std, min_crop_scale),
                                                   "image", custom_transform=train_transform is not None)
        self.image_size = int(image_size)
        self.mean, self.std = mean, std
        # A test-time method may replace the test split's transform and batch size (TPT: the
        # views of one image per batch); its random views are then seeded per image.
        self.test_transform: Callable | None = None
        self.test_batch_size: int | None = None

    @property
    def classnames(self) -> list[str]:
        return self.splits.classnames

    @property
    def num_classes(self) -> int:
        return self.splits.num_classes

    def split_sizes(self) -> dict[str, int]:
        return self.splits.sizes()

    def _loader(self, items: list[Datum], transform, batch_size: int, sampler, drop_last: bool,
                split: str, train_images=None, num_workers: int | None = None) -> DataLoader:
        num_workers = self.num_workers if num_workers is None else num_workers
        return DataLoader(
            ImageDataset(items, transform, skip_corrupt=self.skip_corrupt, train_images=train_images),
            batch_size=batch_size,
            sampler=sampler,
            num_workers=num_workers,
            pin_memory=self.pin_memory,
            drop_last=drop_last,
            persistent_workers=num_workers > 0,
            collate_fn=collate_for(split, self.skip_corrupt),
            generator=self.loader_generator(),
        )

    def train_dataloader(self) -> DataLoader:
        items = self.splits.train
        if not items:
            raise DataError("the train split is empty: this dataset is evaluation-only (test split only); "
                            "train on another dataset and evaluate on this one")
        sampler = EpochSeededSampler(len(items), seed=self.seed, shuffle=True, keyed=True)
        self.position_sampler(sampler, self.batch_size)
        drop_last = len(sampler) >= self.batch_size if self.drop_last is None else self.drop_last
        workers = self.prepare_train_images(items, self.num_workers)
        return self._loader(items, self.train_transform, self.batch_size, sampler, drop_last, "train",
                            self.train_images, workers)

    def _eval_loader(self, items: list[Datum], split: str, transform=None, batch_size: int | None = None) -> DataLoader:
        sampler = EpochSeededSampler(len(items), seed=self.seed, shuffle=False, pad=False, keyed=transform is not None)
        return self._loader(items, transform or self.eval_transform, batch_size or self.eval_batch_size, sampler,
                            False, split)

    def val_dataloader(self) -> DataLoader:
        if self.splits.val:
            return self._eval_loader(self.splits.val, "val")
        return self._eval_loader(self.splits.test, "test")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.splits.test, "test", self.test_transform, self.test_batch_size)
