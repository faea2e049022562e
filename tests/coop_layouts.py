"""Test helpers: write miniature datasets in CoOp's real on-disk layouts into a temp folder.

`write_coop_dataset(root, name, classes, counts)` writes dataset `name` (a registry name from
kdpl.datasets) under data root `root`, with `counts[split]` images per class per split, and
returns the expected `{"train"|"val"|"test": [(label, classname), ...]}` in reading order.
"""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

# Registry name -> (dataset folder, image folder, split json); mirrors kdpl.datasets on purpose
# (spelled out again so a typo in one of them makes the tests fail).
JSON_LAYOUTS = {
    "caltech101": ("caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json"),
    "oxford_pets": ("oxford_pets", "images", "split_zhou_OxfordPets.json"),
    "stanford_cars": ("stanford_cars", "", "split_zhou_StanfordCars.json"),
    "oxford_flowers": ("oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json"),
    "food101": ("food-101", "images", "split_zhou_Food101.json"),
    "sun397": ("sun397", "SUN397", "split_zhou_SUN397.json"),
    "dtd": ("dtd", "images", "split_zhou_DescribableTextures.json"),
    "eurosat": ("eurosat", "2750", "split_zhou_EuroSAT.json"),
    "ucf101": ("ucf101", "UCF-101-midframes", "split_zhou_UCF101.json"),
}
SPLITS = ("train", "val", "test")


def write_image(path: Path, value: int = 128, size: tuple[int, int] = (12, 10)) -> Path:
    """A small solid-colour image; the format follows the file extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value % 256, (value * 7) % 256, (value * 13) % 256)).save(path)
    return path


def wnid(i: int) -> str:
    return f"n{1440000 + i:08d}"


def _write_json_dataset(root, name, classes, counts):
    folder, image_folder, split_name = JSON_LAYOUTS[name]
    dataset_dir = root / folder
    image_dir = dataset_dir / image_folder if image_folder else dataset_dir
    raw, expected = {}, {}
    for split in SPLITS:
        raw[split], expected[split] = [], []
        for label, classname in enumerate(classes):
            for i in range(counts[split]):
                rel = f"{classname}/{split}_{i}.png"
                if name == "stanford_cars":  # CoOp's json paths are relative to the dataset dir
                    rel = f"cars_{split}/{label:03d}_{i}.png"
                write_image(image_dir / rel, value=label * 31 + i)
                raw[split].append([rel, label, classname])
                expected[split].append((label, classname))
    (dataset_dir / split_name).write_text(json.dumps(raw))
    return expected


def _write_fgvc(root, classes, counts):
    dataset_dir = root / "fgvc_aircraft"
    dataset_dir.mkdir(parents=True)
    (dataset_dir / "variants.txt").write_text("".join(f"{c}\n" for c in classes))
    expected = {}
    for split in SPLITS:
        lines, expected[split] = [], []
        for label, classname in enumerate(classes):
            for i in range(counts[split]):
                image_id = f"{SPLITS.index(split)}{label:02d}{i:03d}"
                write_image(dataset_dir / "images" / f"{image_id}.jpg", value=label * 31 + i)
                lines.append(f"{image_id} {classname}\n")
                expected[split].append((label, classname))
        (dataset_dir / f"images_variant_{split}.txt").write_text("".join(lines))
    return expected


def _write_classnames(path: Path, names: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{w} {n}\n" for w, n in names.items()))


def _write_wnid_folders(image_dir, classes, count, extension=".JPEG"):
    items = []
    for label, _ in enumerate(classes):
        for i in range(count):
            write_image(image_dir / wnid(label) / f"img_{i}{extension}", value=label * 31 + i)
            items.append((label, classes[label]))
    return items


def _write_imagenet(root, classes, counts):
    dataset_dir = root / "imagenet"
    _write_classnames(dataset_dir / "classnames.txt", {wnid(i): c for i, c in enumerate(classes)})
    train = _write_wnid_folders(dataset_dir / "images" / "train", classes, counts["train"])
    test = _write_wnid_folders(dataset_dir / "images" / "val", classes, counts["test"])
    return {"train": train, "val": test, "test": test}


def _write_imagenet_v2(root, classes, counts):
    dataset_dir = root / "imagenetv2"
    _write_classnames(dataset_dir / "classnames.txt", {wnid(i): c for i, c in enumerate(classes)})
    image_dir = dataset_dir / "imagenetv2-matched-frequency-format-val"
    test = []
    for label, classname in enumerate(classes):
        for i in range(counts["test"]):
            write_image(image_dir / str(label) / f"{i:040x}.jpeg", value=label * 31 + i)
            test.append((label, classname))
    return {"train": [], "val": [], "test": test}


VARIANT_DIRS = {
    "imagenet_sketch": ("imagenet-sketch", "images"),
    "imagenet_a": ("imagenet-adversarial", "imagenet-a"),
    "imagenet_r": ("imagenet-rendition", "imagenet-r"),
}


def _write_wnid_variant(root, name, classes, counts):
    """Only every other wnid of classnames.txt has a folder (A/R hold 200 of the 1000 classes);
    labels index the sorted folders that are present."""
    folder, image_folder = VARIANT_DIRS[name]
    dataset_dir = root / folder
    all_names = {}
    for i, classname in enumerate(classes):
        all_names[wnid(2 * i)] = classname
        all_names[wnid(2 * i + 1)] = f"absent {i}"
    _write_classnames(dataset_dir / "classnames.txt", all_names)
    image_dir = dataset_dir / image_folder
    test = []
    for label, classname in enumerate(classes):
        for i in range(counts["test"]):
            write_image(image_dir / wnid(2 * label) / f"{i}.jpg", value=label * 31 + i)
            test.append((label, classname))
    (image_dir / "README.txt").write_text("not a class folder\n")
    return {"train": [], "val": [], "test": test}


def write_coop_dataset(root: Path, name: str, classes: list[str], counts: dict[str, int]):
    """Write dataset `name` under data root `root`; return the expected (label, name) per split."""
    root = Path(root)
    if name in JSON_LAYOUTS:
        return _write_json_dataset(root, name, classes, counts)
    if name == "fgvc_aircraft":
        return _write_fgvc(root, classes, counts)
    if name == "imagenet":
        return _write_imagenet(root, classes, counts)
    if name == "imagenet_v2":
        return _write_imagenet_v2(root, classes, counts)
    if name in VARIANT_DIRS:
        return _write_wnid_variant(root, name, classes, counts)
    raise KeyError(name)


ALL_NAMES = ("imagenet", *JSON_LAYOUTS, "fgvc_aircraft", "imagenet_v2", *VARIANT_DIRS)


def snapshot(root: Path) -> list[tuple[str, int]]:
    """Every path under `root` with its size: detects any file written or changed in place."""
    return sorted((str(p.relative_to(root)), p.stat().st_size if p.is_file() else -1)
                  for p in Path(root).rglob("*"))
