"""LightningDataModule for image classification over `DatasetSplits`."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader

from .dataset import ImageDataset
from .records import DatasetSplits, Datum
from .sampling import EpochSeededSampler
from .transforms import build_transform

SplitsSource = DatasetSplits | Callable[[], DatasetSplits]


class ClassificationDataModule(L.LightningDataModule):
    """Train/val/test loaders over a `DatasetSplits` (or a callable returning one, read lazily).

    Training order comes from `EpochSeededSampler` (deterministic in (seed, epoch), split across
    ranks), so the Trainer must be built with `use_distributed_sampler=False`; otherwise Lightning
    would wrap the sampler in a second DistributedSampler. Val/test are read sequentially, sharded
    across ranks without padding, so each image is evaluated exactly once overall.

    `drop_last=None` follows Dassl: drop the last incomplete batch iff this rank has at least one
    full batch (single process: `len(train) >= batch_size`). `val_dataloader` uses the val split,
    or the test split when val is empty (the CoOp protocols never use val).
    """

    def __init__(
        self,
        splits: SplitsSource,
        *,
        batch_size: int = 32,
        eval_batch_size: int = 100,
        num_workers: int = 0,
        image_size: int = 224,
        mean: Sequence[float] | str | None = None,
        std: Sequence[float] | None = None,
        transform_kind: str = "clip",
        min_crop_scale: float = 0.08,
        train_transform: Callable | None = None,
        eval_transform: Callable | None = None,
        seed: int = 0,
        drop_last: bool | None = None,
        pin_memory: bool | None = None,
    ):
        super().__init__()
        self._source = splits
        self._splits: DatasetSplits | None = splits if isinstance(splits, DatasetSplits) else None
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.drop_last = drop_last
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.train_transform = train_transform or build_transform(
            True, image_size, mean, std, kind=transform_kind, min_crop_scale=min_crop_scale)
        self.eval_transform = eval_transform or build_transform(
            False, image_size, mean, std, kind=transform_kind)

    @property
    def splits(self) -> DatasetSplits:
        """The splits, read on first use when a provider callable was given."""
        if self._splits is None:
            splits = self._source()
            if not isinstance(splits, DatasetSplits):
                raise TypeError(f"splits provider returned {type(splits).__name__}, "
                                "expected DatasetSplits")
            self._splits = splits
        return self._splits

    @property
    def classnames(self) -> list[str]:
        return self.splits.classnames

    @property
    def num_classes(self) -> int:
        return self.splits.num_classes

    def setup(self, stage: str | None = None) -> None:
        self.splits  # noqa: B018 - resolve lazily-provided splits once per process

    def _loader(self, items: list[Datum], transform, batch_size: int, sampler,
                drop_last: bool) -> DataLoader:
        return DataLoader(
            ImageDataset(items, transform),
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            drop_last=drop_last,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        items = self.splits.train
        if not items:
            raise ValueError("the train split is empty; this dataset is evaluation-only")
        sampler = EpochSeededSampler(len(items), seed=self.seed, shuffle=True)
        drop_last = len(sampler) >= self.batch_size if self.drop_last is None else self.drop_last
        return self._loader(items, self.train_transform, self.batch_size, sampler, drop_last)

    def _eval_loader(self, items: list[Datum]) -> DataLoader:
        sampler = EpochSeededSampler(len(items), seed=self.seed, shuffle=False, pad=False)
        return self._loader(items, self.eval_transform, self.eval_batch_size, sampler, False)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.splits.val or self.splits.test)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.splits.test)
