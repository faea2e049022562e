"""GCD torch datasets, the two-view transform and the LightningDataModule.

Batch formats (dicts, collated by the default collate function):

- train: `{"images": FloatTensor[B, 2, 3, H, W], "label": LongTensor[B], "index": LongTensor[B],
  "is_labelled": BoolTensor[B]}`. The two augmented views are stacked on dim 1; the reference's
  `torch.cat(views)` layout ([view1; view2], 2B rows) is `torch.cat(images.unbind(1))`.
  `label` is the true remapped label for every item (the losses only read it where
  `is_labelled`, as in the reference).
- evaluation: `{"image": FloatTensor[B, 3, H, W], "label", "index", "is_old": BoolTensor[B]}`.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from clipcore.data import Datum, build_gcd_transform
from clipcore.data.augment import gcd_augmentation
from clipcore.data.corrupt import SkippedImage, collate_for, load_or_skip
from clipcore.data.pipeline import TrainImages
from clipcore.data.resume import ResumableDataModule
from clipcore.data.sampling import augmentation_rng, split_key

from .dataset_registry import load_gcd_splits
from .sampling import WeightedEpochSampler
from .splits import REFERENCE_SPLIT_SEED, FileImageSource, GCDSplits, ImageSource

# Names of the `val_dataloader()` loaders, by dataloader_idx.
VAL_LOADER_NAMES = ("unlabelled", "test")
# A training batch's labelled rows, found on the host before the batch moves (``is_labelled`` on
# the device would make the step wait for the device to count them).
LABELLED_INDEX_KEY = "labelled_index"


class TwoViews:
    """Apply `transform` twice to one image and stack the views: `[2, ...]` (SimGCD's
    `ContrastiveLearningViewGenerator` with n_views=2, stacked instead of listed)."""

    def __init__(self, transform: Callable, n_views: int = 2):
        self.transform = transform
        self.n_views = n_views

    def __call__(self, image) -> torch.Tensor:
        return torch.stack([self.transform(image) for _ in range(self.n_views)])

    def __repr__(self) -> str:
        return f"TwoViews(n_views={self.n_views}, {self.transform!r})"


class GCDTrainDataset(Dataset):
    """Labelled items then unlabelled items (the reference's `MergedDataset`), two views each.
    Keys are positions or `SampleKey`s (whose seed drives the augmentations of that draw)."""

    def __init__(self, labelled: Sequence[Datum], unlabelled: Sequence[Datum],
                 transform: Callable, image_source: ImageSource | None = None,
                 skip_corrupt: bool = False, train_images: TrainImages | None = None):
        self.items = list(labelled) + list(unlabelled)
        self.n_labelled = len(labelled)
        self.transform = transform
        self.image_source = image_source or FileImageSource()
        self.skip_corrupt = skip_corrupt
        # The cached and gpu pipelines: the views (or their crop boxes) from the cached pixels.
        self.train_images = train_images

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key) -> dict | SkippedImage:
        position, seed = split_key(key)
        datum = self.items[position]
        if self.train_images is not None:
            pixels = self.train_images.draw(position, seed)
        else:
            image = load_or_skip(datum.path, datum.index, self.skip_corrupt, self.image_source)
            if isinstance(image, SkippedImage):
                return image
            with augmentation_rng(seed):
                pixels = {"images": self.transform(image)}
        if isinstance(pixels, SkippedImage):
            return pixels
        return {**pixels, "label": datum.label, "index": datum.index, "is_labelled": position < self.n_labelled}


class GCDEvalDataset(Dataset):
    """One deterministic view per item, with the old/new flag (`label < n_old`) and, when
    `n_labelled` is given (items = labelled first, then unlabelled), `is_labelled`."""

    def __init__(self, items: Sequence[Datum], transform: Callable, n_old: int,
                 image_source: ImageSource | None = None, n_labelled: int | None = None,
                 skip_corrupt: bool = False):
        self.items = list(items)
        self.transform = transform
        self.n_old = n_old
        self.image_source = image_source or FileImageSource()
        self.n_labelled = n_labelled
        self.skip_corrupt = skip_corrupt

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, position: int) -> dict | SkippedImage:
        datum = self.items[position]
        image = load_or_skip(datum.path, datum.index, self.skip_corrupt, self.image_source)
        if isinstance(image, SkippedImage):
            return image
        sample = {"image": self.transform(image), "label": datum.label,
                  "index": datum.index, "is_old": datum.label < self.n_old}
        if self.n_labelled is not None:
            sample["is_labelled"] = position < self.n_labelled
        return sample


def read_gcd_splits(name: str, root: str | os.PathLike, *, prop_train_labels: float = 0.5, seed: int = 0,
                    split_follows_seed: bool = False, reader_options: dict | None = None) -> GCDSplits:
    """Registered dataset `name` read from `root`. The labelled split uses the reference's fixed
    seed 0 unless `split_follows_seed`, then the run `seed`."""
    split_seed = seed if split_follows_seed else REFERENCE_SPLIT_SEED
    return load_gcd_splits(name, root, prop_train_labels=prop_train_labels, split_seed=split_seed,
                           **(reader_options or {}))


class GCDDataModule(ResumableDataModule):
    """Train / evaluation loaders of a `GCDSplits`.

    - `train_dataloader()`: labelled + unlabelled, two train-transform views, sampled by
      `WeightedEpochSampler` (seeded by `seed`), `drop_last=True`.
    - `val_dataloader()`: `[unlabelled train (transductive, the reported protocol), test
      (inductive)]`, test transform, in order.
    - `train_eval_dataloader()`: every train image (labelled first) with the test transform, in
      order: the input of spectral filtering and of the teacher-representation cache.

    Normalisation defaults to ImageNet statistics like the reference (`normalization="clip"`
    gives CLIP's). The reference's `ColorJitter()` has zero strength and is left out.
    """

    def __init__(self, splits: GCDSplits, *, image_size: int = 224, batch_size: int = 128,
                 eval_batch_size: int = 256, num_workers: int = 8, seed: int = 0,
                 normalization: str | Sequence[float] = "imagenet",
                 std: Sequence[float] | None = None, pin_memory: bool = True,
                 persistent_workers: bool = False, skip_corrupt: bool = False,
                 max_corrupt_fraction: float = 0.01, pipeline: str = "cpu",
                 cache_memory_fraction: float = 0.5):
        super().__init__(seed=seed, skip_corrupt=skip_corrupt, max_corrupt_fraction=max_corrupt_fraction,
                         pipeline=pipeline, cache_memory_fraction=cache_memory_fraction)
        self.splits = splits
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)
        self.num_workers = int(num_workers)
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and self.num_workers > 0
        self.train_transform = build_gcd_transform(True, self.image_size, normalization, std)
        self.test_transform = build_gcd_transform(False, self.image_size, normalization, std)
        self.train_images = self.make_train_images(gcd_augmentation(self.image_size, normalization, std),
                                                   "images", load=splits.image_source)

    @classmethod
    def from_name(cls, name: str, root: str | os.PathLike, *, prop_train_labels: float = 0.5,
                  seed: int = 0, split_follows_seed: bool = False,
                  reader_options: dict | None = None, **kwargs) -> GCDDataModule:
        """Read registered dataset `name` from `root` (see :func:`read_gcd_splits`)."""
        splits = read_gcd_splits(name, root, prop_train_labels=prop_train_labels, seed=seed,
                                 split_follows_seed=split_follows_seed, reader_options=reader_options)
        return cls(splits, seed=seed, **kwargs)

    @property
    def classnames(self) -> list[str]:
        return self.splits.classnames

    @property
    def num_classes(self) -> int:
        return self.splits.num_classes

    @property
    def n_old(self) -> int:
        return self.splits.n_old

    def split_sizes(self) -> dict[str, int]:
        return {"train": len(self.splits.train), "test": len(self.splits.test)}

    def train_dataset(self) -> GCDTrainDataset:
        return GCDTrainDataset(self.splits.train_labelled, self.splits.train_unlabelled,
                               TwoViews(self.train_transform), self.splits.image_source,
                               skip_corrupt=self.skip_corrupt, train_images=self.train_images)

    def train_sampler(self) -> WeightedEpochSampler:
        return WeightedEpochSampler(len(self.splits.train_labelled),
                                    len(self.splits.train_unlabelled), seed=self.seed, keyed=True)

    def _loader(self, dataset: Dataset, batch_size: int, split: str, num_workers: int | None = None,
                **kwargs) -> DataLoader:
        num_workers = self.num_workers if num_workers is None else num_workers
        return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, pin_memory=self.pin_memory,
                          persistent_workers=self.persistent_workers and num_workers > 0,
                          collate_fn=collate_for(split, self.skip_corrupt),
                          generator=self.loader_generator(), **kwargs)

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        batch = super().on_before_batch_transfer(batch, dataloader_idx)
        if isinstance(batch, dict) and "is_labelled" in batch:
            batch[LABELLED_INDEX_KEY] = batch["is_labelled"].nonzero().squeeze(1)
        return batch

    def train_dataloader(self) -> DataLoader:
        sampler = self.position_sampler(self.train_sampler(), self.batch_size)
        dataset = self.train_dataset()
        workers = self.prepare_train_images(dataset.items, self.num_workers)
        return self._loader(dataset, self.batch_size, "train", workers, sampler=sampler, drop_last=True)

    def eval_dataset(self, items: Sequence[Datum]) -> GCDEvalDataset:
        return GCDEvalDataset(items, self.test_transform, self.n_old, self.splits.image_source,
                              skip_corrupt=self.skip_corrupt)

    def val_dataloader(self) -> list[DataLoader]:
        """Loaders named by `VAL_LOADER_NAMES` (index = Lightning's `dataloader_idx`)."""
        return [self._loader(self.eval_dataset(self.splits.train_unlabelled),
                             self.eval_batch_size, "train", shuffle=False),
                self._loader(self.eval_dataset(self.splits.test), self.eval_batch_size, "test",
                             shuffle=False)]

    def test_dataloader(self) -> list[DataLoader]:
        return self.val_dataloader()

    def train_eval_dataloader(self, batch_size: int | None = None) -> DataLoader:
        """All train images, labelled first, test transform, batches with `is_labelled`."""
        dataset = GCDEvalDataset(self.splits.train, self.test_transform, self.n_old,
                                 self.splits.image_source, len(self.splits.train_labelled),
                                 skip_corrupt=self.skip_corrupt)
        return self._loader(dataset, batch_size or self.eval_batch_size, "train", shuffle=False)
