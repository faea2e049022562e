"""Build a classification datamodule from the ``data`` section of a run config."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from clipcore.config import ConfigError

from .datamodule import ClassificationDataModule
from .fewshot import SUBSETS, sample_few_shot, subsample_classes
from .records import DatasetSplits
from .registry import DatasetInfo, get_dataset


def read_splits(data_cfg, seed: int, info: DatasetInfo | None = None, sample_train: bool = True) -> DatasetSplits:
    """Read, few-shot sample (Dassl order: train k shots, val min(k, 4)), then keep base/new classes.
    ``sample_train=False`` keeps every training image (a method that picks its own shots: UPL)."""
    if data_cfg.subsample_classes not in SUBSETS:
        raise ConfigError(f"data.subsample_classes={data_cfg.subsample_classes!r}: expected one of {SUBSETS}")
    info = info or get_dataset(data_cfg.name)
    splits = info.read(Path(data_cfg.root).expanduser())
    if data_cfg.num_shots:
        splits = dataclasses.replace(
            splits,
            train=sample_few_shot(splits.train, data_cfg.num_shots, seed) if sample_train else splits.train,
            val=sample_few_shot(splits.val, min(data_cfg.num_shots, 4), seed),
        )
    return subsample_classes(splits, data_cfg.subsample_classes)


def classification_datamodule(cfg, image_size: int, stats: tuple | None = None,
                              sample_train: bool = True, splits: DatasetSplits | None = None,
                              ) -> ClassificationDataModule:
    """``image_size``: the model's, unless ``data.image_size`` is set. ``stats``: the model's own
    ``(mean, std)`` (``<model>.preprocess: model``): they replace ``data.normalization``, and
    ``image_size`` is used whatever ``data.image_size`` says. ``sample_train``: see read_splits.
    ``splits``: already read (methods read them before loading any model: a wrong dataset name or
    folder is then reported at once, not after a model download)."""
    data = cfg.data
    mean, std = stats if stats is not None else (data.normalization, None)
    size = image_size if stats is not None else (data.image_size or image_size)
    # Read now at the latest: a missing folder or split file fails before a run folder exists.
    return ClassificationDataModule(
        splits if splits is not None else read_splits(data, cfg.seed, sample_train=sample_train),
        batch_size=data.batch_size,
        eval_batch_size=data.eval_batch_size,
        num_workers=data.num_workers,
        image_size=size,
        mean=mean,
        std=std,
        min_crop_scale=data.min_crop_scale,
        seed=cfg.seed,
        skip_corrupt=data.skip_corrupt,
        max_corrupt_fraction=data.max_corrupt_fraction,
        pipeline=data.pipeline,
        cache_memory_fraction=data.cache_memory_fraction,
    )


def dataset_template(cfg) -> str:
    """The prompt template of the dataset's classes: ``data.template``, else the registered one."""
    from clipcore.templates import check_template

    if cfg.data.template is not None:
        return check_template(cfg.data.template, "data.template")
    return get_dataset(cfg.data.name).template
