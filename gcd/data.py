"""One import point for GCD data: splits, readers, sampler, transforms and the datamodule.

The code lives in `gcd.splits` (records, remapping, labelled draw), `gcd.dataset_registry`,
`gcd.datasets` (CIFAR, ImageNet-100, image-folder readers), `gcd.fgvc_datasets` (CUB, Cars, Aircraft),
`gcd.sampling` (weighted epoch sampler) and `gcd.datamodule` (torch datasets, LightningDataModule).
"""
from clipcore.data import build_gcd_transform

from .datamodule import VAL_LOADER_NAMES, GCDDataModule, GCDEvalDataset, GCDTrainDataset, TwoViews, read_gcd_splits
from .dataset_registry import GCDDatasetInfo, get_gcd_dataset, list_gcd_datasets, load_gcd_splits, register_gcd_dataset
from .datasets import gcd_image_folder, imagenet_100_class_indices
from .fgvc_datasets import ssb_class_split
from .sampling import WeightedEpochSampler, gcd_sample_weights
from .splits import (
                         REFERENCE_SPLIT_SEED,
                         ArrayImageSource,
                         FileImageSource,
                         GCDSplits,
                         RawGCDData,
                         make_gcd_splits,
                         subsample_instances,
)

__all__ = [
    "REFERENCE_SPLIT_SEED", "VAL_LOADER_NAMES", "ArrayImageSource", "FileImageSource",
    "GCDDataModule", "GCDDatasetInfo", "GCDEvalDataset", "GCDSplits", "GCDTrainDataset",
    "RawGCDData", "TwoViews", "WeightedEpochSampler", "build_gcd_transform",
    "gcd_image_folder", "gcd_sample_weights", "get_gcd_dataset", "imagenet_100_class_indices",
    "list_gcd_datasets", "load_gcd_splits", "make_gcd_splits", "read_gcd_splits", "register_gcd_dataset",
    "ssb_class_split", "subsample_instances",
]
