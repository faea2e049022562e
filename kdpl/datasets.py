"""The CoOp benchmark datasets (11) and the ImageNet variants (4), in CoOp's on-disk layouts.

Each reader takes the *data root* that holds the dataset folders (CoOp's `DATASET.ROOT`) and
reads the official split files (`split_zhou_*.json`, FGVC's txt lists). Unlike the reference,
a missing split file is an error, never silently regenerated at random, and nothing (few-shot
pickles, ImageNet `preprocessed.pkl`) is written into the dataset folders.
"""
from __future__ import annotations

from pathlib import Path

from clipcore.data import (
    DataError,
    DatasetSplits,
    Datum,
    classnames_from_items,
    list_class_images,
    read_coop_split_json,
    read_image_folder,
    read_lines,
    read_wnid_classnames,
    register_dataset,
    require_dir,
)

DATASETS_MD = "https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md"
GENERIC_TEMPLATE = "a photo of a {}."


def _hint(title: str) -> str:
    return (f"CoOp's DATASETS.md ({DATASETS_MD}), section '{title}', describes how to get this "
            "dataset and its split file; pass the folder that contains the dataset folder as "
            "the data root.")


def _splits(train: list[Datum], val: list[Datum], test: list[Datum], source: str) -> DatasetSplits:
    return DatasetSplits(train, val, test, classnames_from_items(train, val, test, source=source))


# name: (dataset folder, image folder inside it ("" = the dataset folder), split json,
#        DATASETS.md section title, template)
JSON_DATASETS = {
    "caltech101": ("caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json",
                   "Caltech101", GENERIC_TEMPLATE),
    "oxford_pets": ("oxford_pets", "images", "split_zhou_OxfordPets.json",
                    "OxfordPets", "a photo of a {}, a type of pet."),
    "stanford_cars": ("stanford_cars", "", "split_zhou_StanfordCars.json",
                      "StanfordCars", GENERIC_TEMPLATE),
    "oxford_flowers": ("oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json",
                       "Flowers102", "a photo of a {}, a type of flower."),
    "food101": ("food-101", "images", "split_zhou_Food101.json",
                "Food101", "a photo of {}, a type of food."),
    "sun397": ("sun397", "SUN397", "split_zhou_SUN397.json", "SUN397", GENERIC_TEMPLATE),
    "dtd": ("dtd", "images", "split_zhou_DescribableTextures.json", "DTD", "{} texture."),
    "eurosat": ("eurosat", "2750", "split_zhou_EuroSAT.json",
                "EuroSAT", "a centered satellite photo of {}."),
    "ucf101": ("ucf101", "UCF-101-midframes", "split_zhou_UCF101.json",
               "UCF101", "a photo of a person doing {}."),
}


def read_json_dataset(root: Path, name: str) -> DatasetSplits:
    """Read one of the `split_zhou_*.json` datasets of JSON_DATASETS from data root `root`."""
    folder, image_folder, split_name, title, _ = JSON_DATASETS[name]
    hint = _hint(title)
    dataset_dir = require_dir(Path(root) / folder, f"{name} dataset folder", hint)
    image_dir = require_dir(dataset_dir / image_folder, f"{name} image folder", hint)
    parts = read_coop_split_json(dataset_dir / split_name, image_dir, hint)
    return _splits(parts["train"], parts["val"], parts["test"], f"{name} ({dataset_dir / split_name})")


def _register_json_dataset(name: str) -> None:
    folder, image_folder, split_name, _, template = JSON_DATASETS[name]
    images = f"{folder}/{image_folder}/" if image_folder else f"{folder}/ (paths in the json)"
    layout = f"<root>/{folder}/{split_name} and images under <root>/{images}"

    def read(root: Path) -> DatasetSplits:
        return read_json_dataset(root, name)

    read.__name__ = read.__qualname__ = f"read_{name}"
    read.__doc__ = f"Read {name}: {layout}."
    register_dataset(name, template=template, layout=layout)(read)


for _name in JSON_DATASETS:
    _register_json_dataset(_name)


@register_dataset(
    "fgvc_aircraft", template="a photo of a {}, a type of aircraft.",
    layout="<root>/fgvc_aircraft/{variants.txt, images_variant_{train,val,test}.txt, images/<id>.jpg}",
)
def read_fgvc_aircraft(root: Path) -> DatasetSplits:
    """FGVC-Aircraft: `variants.txt` gives the class order; split lists are '<id> <variant>'."""
    hint = _hint("FGVCAircraft")
    dataset_dir = require_dir(Path(root) / "fgvc_aircraft", "fgvc_aircraft dataset folder", hint)
    image_dir = require_dir(dataset_dir / "images", "fgvc_aircraft image folder", hint)
    classnames = read_lines(dataset_dir / "variants.txt", "fgvc_aircraft class list", hint)
    label_of = {name: label for label, name in enumerate(classnames)}
    parts = {}
    for split in ("train", "val", "test"):
        list_file = dataset_dir / f"images_variant_{split}.txt"
        items = []
        for line in read_lines(list_file, f"fgvc_aircraft {split} list", hint):
            image_id, _, variant = line.partition(" ")
            if variant not in label_of:
                raise DataError(f"{list_file}: variant {variant!r} (image {image_id}) is not in "
                                f"{dataset_dir / 'variants.txt'}")
            items.append(Datum(str(image_dir / f"{image_id}.jpg"), label_of[variant], variant))
        parts[split] = items
    return DatasetSplits(parts["train"], parts["val"], parts["test"], list(classnames))


@register_dataset(
    "imagenet", template=GENERIC_TEMPLATE,
    layout="<root>/imagenet/classnames.txt and <root>/imagenet/images/{train,val}/<wnid>/*",
)
def read_imagenet(root: Path) -> DatasetSplits:
    """ImageNet: train = images/train, test = val = images/val (the official val set)."""
    hint = _hint("ImageNet")
    dataset_dir = require_dir(Path(root) / "imagenet", "imagenet dataset folder", hint)
    names = read_wnid_classnames(dataset_dir / "classnames.txt", hint)
    train, train_names = read_image_folder(dataset_dir / "images" / "train",
                                           folder_names=names, hint=hint)
    test, test_names = read_image_folder(dataset_dir / "images" / "val",
                                         folder_names=names, hint=hint)
    if train_names != test_names:
        raise DataError(f"imagenet: images/train and images/val under {dataset_dir} hold "
                        "different class folders")
    # CoOp uses the official val set both as val and test; the same list object is shared.
    return DatasetSplits(train=train, val=test, test=test, classnames=train_names)


def _test_only(items: list[Datum], classnames: list[str]) -> DatasetSplits:
    return DatasetSplits(train=[], val=[], test=items, classnames=classnames)


@register_dataset(
    "imagenet_v2", template=GENERIC_TEMPLATE,
    layout="<root>/imagenetv2/classnames.txt and "
           "<root>/imagenetv2/imagenetv2-matched-frequency-format-val/{0..999}/*",
)
def read_imagenet_v2(root: Path) -> DatasetSplits:
    """ImageNetV2 (matched frequency): folder `i` holds class i of `classnames.txt` order."""
    hint = _hint("ImageNetV2")
    dataset_dir = require_dir(Path(root) / "imagenetv2", "imagenetv2 dataset folder", hint)
    classnames = list(read_wnid_classnames(dataset_dir / "classnames.txt", hint).values())
    image_dir = require_dir(dataset_dir / "imagenetv2-matched-frequency-format-val",
                            "imagenetv2 image folder", hint)
    items = []
    for label, classname in enumerate(classnames):
        class_dir = require_dir(image_dir / str(label), f"imagenetv2 class {label} folder", hint)
        items.extend(Datum(str(p), label, classname) for p in list_class_images(class_dir))
    return _test_only(items, classnames)


def _read_wnid_variant(root: Path, folder: str, image_folder: str, title: str) -> DatasetSplits:
    """Variants with `<image_folder>/<wnid>/*`: label = index over the sorted wnid folders present,
    names from the variant's `classnames.txt` (files such as README.txt are skipped)."""
    hint = _hint(title)
    dataset_dir = require_dir(Path(root) / folder, f"{folder} dataset folder", hint)
    names = read_wnid_classnames(dataset_dir / "classnames.txt", hint)
    items, classnames = read_image_folder(dataset_dir / image_folder, folder_names=names, hint=hint)
    return _test_only(items, classnames)


@register_dataset("imagenet_sketch", template=GENERIC_TEMPLATE,
                  layout="<root>/imagenet-sketch/classnames.txt and "
                         "<root>/imagenet-sketch/images/<wnid>/*")
def read_imagenet_sketch(root: Path) -> DatasetSplits:
    """ImageNet-Sketch (1000 classes), test only."""
    return _read_wnid_variant(root, "imagenet-sketch", "images", "ImageNet-Sketch")


@register_dataset("imagenet_a", template=GENERIC_TEMPLATE,
                  layout="<root>/imagenet-adversarial/classnames.txt and "
                         "<root>/imagenet-adversarial/imagenet-a/<wnid>/*")
def read_imagenet_a(root: Path) -> DatasetSplits:
    """ImageNet-A (200 classes), test only."""
    return _read_wnid_variant(root, "imagenet-adversarial", "imagenet-a", "ImageNet-A")


@register_dataset("imagenet_r", template=GENERIC_TEMPLATE,
                  layout="<root>/imagenet-rendition/classnames.txt and "
                         "<root>/imagenet-rendition/imagenet-r/<wnid>/*")
def read_imagenet_r(root: Path) -> DatasetSplits:
    """ImageNet-R (200 classes), test only."""
    return _read_wnid_variant(root, "imagenet-rendition", "imagenet-r", "ImageNet-R")


COOP_DATASETS = ("imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers",
                 "food101", "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101")
IMAGENET_VARIANTS = ("imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r")
__all__ = ["COOP_DATASETS", "IMAGENET_VARIANTS", "JSON_DATASETS", "read_json_dataset",
           "read_fgvc_aircraft", "read_imagenet", "read_imagenet_v2", "read_imagenet_sketch",
           "read_imagenet_a", "read_imagenet_r"]
