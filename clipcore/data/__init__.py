"""Data core: records, dataset registry, on-disk readers, few-shot sampling, base/new class
subsets, transforms, a rank-aware deterministic sampler and a LightningDataModule."""
from . import image_folder as _image_folder  # noqa: F401  (registers data.name=image_folder)
from .datamodule import ClassificationDataModule
from .dataset import ImageDataset
from .fewshot import base_new_labels, group_by_label, sample_few_shot, subsample_classes
from .readers import (
    list_class_folders,
    list_class_images,
    list_images,
    load_image,
    read_coop_split_json,
    read_image_folder,
    read_lines,
    read_wnid_classnames,
    require_dir,
    require_file,
)
from .records import DataError, DatasetSplits, Datum, classnames_from_items
from .registry import DatasetInfo, get_dataset, list_datasets, register_dataset
from .sampling import EpochSeededSampler
from .transforms import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_eval_transform,
    build_gcd_transform,
    build_train_transform,
    build_transform,
    resolve_normalization,
)

__all__ = [
    "CLIP_MEAN", "CLIP_STD", "IMAGENET_MEAN", "IMAGENET_STD",
    "ClassificationDataModule", "DataError", "DatasetInfo", "DatasetSplits", "Datum",
    "EpochSeededSampler", "ImageDataset",
    "base_new_labels", "build_eval_transform", "build_gcd_transform", "build_train_transform",
    "build_transform", "classnames_from_items", "get_dataset", "group_by_label",
    "list_class_folders", "list_class_images", "list_datasets", "list_images", "load_image", "read_coop_split_json",
    "read_image_folder", "read_lines", "read_wnid_classnames", "register_dataset",
    "require_dir", "require_file", "resolve_normalization", "sample_few_shot",
    "subsample_classes",
]
