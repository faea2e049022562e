"""Fine-grained GCD readers (CUB-200, Stanford Cars, FGVC-Aircraft) with the SSB class splits.

Known classes are the SSB pickle's `known_classes` in pickle order; unknown classes are
`Hard + Medium + Easy` in that order (spectralgcd.md §6). Class ids are 0-based in each
dataset's own label space (CUB/Cars files are 1-based and shifted by one, like the reference).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from clipcore.classnames import readable_classname
from clipcore.data import DataError, Datum, read_lines, require_dir, require_file

from .dataset_registry import register_gcd_dataset
from .splits import RawGCDData

MISSING_SHOWN = 5


def ssb_class_split(name: str, split_file: str | os.PathLike | None = None):
    """(known, unknown) class ids from the SSB split `{name}_osr_splits.pkl` (asset or file)."""
    from clipcore.assets import asset_path, load_ssb_split
    path = split_file if split_file is not None else asset_path(f"ssb_splits/{name}_osr_splits.pkl")
    try:
        split = load_ssb_split(path)
    except (OSError, ValueError) as err:
        raise DataError(f"could not read the SSB split file {path}: {err}") from err
    unknown = split["unknown_classes"]
    return list(split["known_classes"]), unknown["Hard"] + unknown["Medium"] + unknown["Easy"]


def _require_images(items: list[Datum], what: str, hint: str) -> None:
    missing = [d.path for d in items if not os.path.isfile(d.path)]
    if missing:
        raise DataError(f"{what}: {len(missing)} image file(s) listed but missing, e.g. "
                        f"{missing[:MISSING_SHOWN]}. {hint}")


def _int_columns(path: Path, hint: str) -> dict[int, str]:
    """`<image id> <value>` lines -> {id: value} (CUB metadata files)."""
    table = {}
    for number, line in enumerate(read_lines(path, "CUB metadata file", hint), start=1):
        key, _, value = line.partition(" ")
        if not key.isdigit() or not value:
            raise DataError(f"{path}, line {number}: expected '<image id> <value>', got {line!r}")
        table[int(key)] = value.strip()
    return table


@register_gcd_dataset("cub", layout="<root>/CUB_200_2011/{images.txt, image_class_labels.txt, "
                                    "train_test_split.txt, classes.txt, images/}")
def read_cub(root: Path, ssb_split_file: str | os.PathLike | None = None) -> RawGCDData:
    """CUB-200-2011 in its release layout; images in `images.txt` order, labels minus one."""
    base = root / "CUB_200_2011" if (root / "CUB_200_2011").is_dir() else root
    hint = (f"Expected {root}/CUB_200_2011/ holding images.txt, image_class_labels.txt, "
            f"train_test_split.txt, classes.txt and images/<class folder>/<image>.jpg.")
    require_dir(base / "images", "CUB images folder", hint)
    paths = _int_columns(base / "images.txt", hint)
    labels = _int_columns(base / "image_class_labels.txt", hint)
    is_train = _int_columns(base / "train_test_split.txt", hint)
    classes_file = require_file(base / "classes.txt", "CUB class list", hint)
    # Reference (gen_classnames.py): "12 012.Yellow_headed_Blackbird" -> "Yellow_headed_Blackbird".
    classnames = [readable_classname(re.split(r"\d+\s+\d+\.", line.strip())[-1])
                  for line in read_lines(classes_file, "CUB class list", hint)]
    train, test = [], []
    for image_id, rel_path in paths.items():
        if image_id not in labels or image_id not in is_train:
            raise DataError(f"{base}: image id {image_id} lacks a label or a train/test flag")
        label = int(labels[image_id]) - 1
        if not 0 <= label < len(classnames):
            raise DataError(f"{base}/image_class_labels.txt: label {label + 1} of image "
                            f"{image_id} outside 1..{len(classnames)}")
        datum = Datum(str(base / "images" / rel_path), label, classnames[label])
        (train if is_train[image_id] == "1" else test).append(datum)
    _require_images(train + test, "CUB", hint)
    known, unknown = ssb_class_split("cub", ssb_split_file)
    return RawGCDData(train, test, classnames, known, unknown)


def _mat_field(entry, name: str, position: int):
    names = entry.dtype.names
    return entry[name] if names and name in names else entry[position]


def _read_cars_annotations(mat_path: Path, image_dir: Path, classnames: list[str],
                           hint: str) -> list[Datum]:
    import scipy.io
    annotations = scipy.io.loadmat(str(mat_path)).get("annotations")
    if annotations is None:
        raise DataError(f"{mat_path}: no 'annotations' struct. {hint}")
    items = []
    for entry in annotations[0]:
        # Fields are (bbox_x1, bbox_y1, bbox_x2, bbox_y2, class, fname); the reference indexes
        # 4 and 5, names are preferred when present.
        label = int(np.asarray(_mat_field(entry, "class", 4)).ravel()[0]) - 1
        fname = str(np.asarray(_mat_field(entry, "fname", 5)).ravel()[0])
        if not 0 <= label < len(classnames):
            raise DataError(f"{mat_path}: class {label + 1} of {fname} outside "
                            f"1..{len(classnames)}")
        items.append(Datum(str(image_dir / fname), label, classnames[label]))
    return items


@register_gcd_dataset("scars", layout="<root>/{devkit/{cars_meta,cars_train_annos,"
                                      "cars_test_annos_withlabels}.mat, cars_train/, cars_test/}")
def read_stanford_cars(root: Path, ssb_split_file: str | os.PathLike | None = None) -> RawGCDData:
    """Stanford Cars: `devkit/*.mat` annotations (1-based classes, shifted to 0-based)."""
    import scipy.io
    hint = (f"Expected {root}/devkit/cars_meta.mat, {root}/devkit/cars_train_annos.mat, "
            f"{root}/devkit/cars_test_annos_withlabels.mat, {root}/cars_train/ and "
            f"{root}/cars_test/.")
    devkit = require_dir(root / "devkit", "Stanford Cars devkit folder", hint)
    meta = scipy.io.loadmat(str(require_file(devkit / "cars_meta.mat", "Cars meta file", hint)))
    classnames = [str(np.asarray(name).ravel()[0]) for name in meta["class_names"][0]]
    train = _read_cars_annotations(
        require_file(devkit / "cars_train_annos.mat", "Cars train annotations", hint),
        require_dir(root / "cars_train", "Cars train images", hint), classnames, hint)
    test = _read_cars_annotations(
        require_file(devkit / "cars_test_annos_withlabels.mat", "Cars test annotations", hint),
        require_dir(root / "cars_test", "Cars test images", hint), classnames, hint)
    _require_images(train + test, "Stanford Cars", hint)
    known, unknown = ssb_class_split("scars", ssb_split_file)
    return RawGCDData(train, test, classnames, known, unknown)


def _read_aircraft_list(path: Path, hint: str) -> list[tuple[str, str]]:
    rows = []
    for number, line in enumerate(read_lines(path, "Aircraft image list", hint), start=1):
        image_id, _, variant = line.partition(" ")
        if not variant:
            raise DataError(f"{path}, line {number}: expected '<image id> <variant>', got {line!r}")
        rows.append((image_id, variant))
    return rows


@register_gcd_dataset("aircraft", layout="<root>/data/{images_variant_trainval.txt, "
                                         "images_variant_test.txt, images/}")
def read_aircraft(root: Path, ssb_split_file: str | os.PathLike | None = None) -> RawGCDData:
    """FGVC-Aircraft (variant level): trainval/test lists; classes = sorted unique variants."""
    base = root / "data" if (root / "data").is_dir() else root
    hint = (f"Expected {root}/data/images_variant_trainval.txt, images_variant_test.txt and "
            f"images/<image id>.jpg (the fgvc-aircraft-2013b release).")
    image_dir = require_dir(base / "images", "Aircraft images folder", hint)
    trainval = _read_aircraft_list(base / "images_variant_trainval.txt", hint)
    test_rows = _read_aircraft_list(base / "images_variant_test.txt", hint)
    # The reference keeps a trailing newline in every variant before np.unique; no variant is a
    # prefix of another, so stripping it leaves the sorted order (and the SSB ids) unchanged.
    classnames = sorted({variant for _, variant in trainval})
    index = {name: i for i, name in enumerate(classnames)}
    stray = sorted({v for _, v in test_rows} - set(index))
    if stray:
        raise DataError(f"{base}/images_variant_test.txt: variants {stray[:5]} never occur in "
                        f"images_variant_trainval.txt")

    def items(rows):
        return [Datum(str(image_dir / f"{image_id}.jpg"), index[v], v) for image_id, v in rows]

    train, test = items(trainval), items(test_rows)
    _require_images(train + test, "FGVC-Aircraft", hint)
    known, unknown = ssb_class_split("aircraft", ssb_split_file)
    return RawGCDData(train, test, classnames, known, unknown)
