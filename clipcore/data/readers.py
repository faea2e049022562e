"""On-disk readers: images, class-per-folder trees and CoOp `split_zhou_*.json` files."""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .records import CorruptImageError, DataError, Datum

# Extensions of the formats PIL can decode, minus the ones it only identifies (stub plug-ins for
# scientific formats) or needs outside programs for (PostScript via Ghostscript, vector metafiles).
_NOT_DECODED = frozenset({".bufr", ".grib", ".h5", ".hdf", ".emf", ".wmf", ".eps", ".ps", ".mpeg", ".mpg"})


def _pil_extensions() -> frozenset[str]:
    Image.init()
    return frozenset(ext for ext, fmt in Image.registered_extensions().items()
                     if fmt in Image.OPEN and ext not in _NOT_DECODED)


IMAGE_EXTENSIONS = _pil_extensions()
IMAGE_TYPES_HELP = "any format PIL decodes: .jpg, .jpeg, .png, .webp, .bmp, .gif, .tif, .ppm, ..."
SPLIT_NAMES = ("train", "val", "test")


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image and convert it to RGB; failures name the file."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise CorruptImageError(f"could not decode image {path}: {exc} (set data.skip_corrupt=true "
                                f"to skip undecodable images)", str(path)) from exc


def _hint_suffix(hint: str | None) -> str:
    return f"\n{hint}" if hint else ""


def require_dir(path: str | os.PathLike, what: str, hint: str | None = None) -> Path:
    """Return `path` as a Path if it is a directory, else raise DataError naming it."""
    path = Path(path)
    if not path.is_dir():
        state = "is not a directory" if path.exists() else "does not exist"
        raise DataError(f"{what}: expected a directory at {path}, but it {state}."
                        + _hint_suffix(hint))
    return path


def require_file(path: str | os.PathLike, what: str, hint: str | None = None) -> Path:
    """Return `path` as a Path if it is a regular file, else raise DataError naming it."""
    path = Path(path)
    if not path.is_file():
        state = "is not a file" if path.exists() else "does not exist"
        raise DataError(f"{what}: expected a file at {path}, but it {state}." + _hint_suffix(hint))
    return path


def is_image_file(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def list_class_folders(root: str | os.PathLike) -> list[str]:
    """Sorted names of the non-hidden sub-directories of `root` (files like README.txt skipped)."""
    root = Path(root)
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Sorted image files directly inside `folder`."""
    folder = Path(folder)
    return [folder / n for n in sorted(os.listdir(folder)) if is_image_file(n)]


def list_class_images(folder: str | os.PathLike) -> list[Path]:
    """The images of one class folder; an empty class folder is an error naming it (it would
    otherwise become a class without examples)."""
    images = list_images(folder)
    if not images:
        raise DataError(f"class folder {folder} holds no images ({IMAGE_TYPES_HELP}): "
                        f"add images or remove the folder")
    return images


def read_image_folder(
    root: str | os.PathLike,
    *,
    folder_names: Mapping[str, str] | None = None,
    hint: str | None = None,
) -> tuple[list[Datum], list[str]]:
    """Read a `root/<class folder>/<image>` tree.

    Labels index the sorted class folders. The class name is the folder name, or
    `folder_names[folder]` when a mapping is given (e.g. ImageNet wnid -> readable name).
    """
    root = require_dir(root, "image folder", hint)
    folders = list_class_folders(root)
    if not folders:
        raise DataError(f"image folder {root} contains no class sub-directories." + _hint_suffix(hint))
    items: list[Datum] = []
    classnames: list[str] = []
    for label, folder in enumerate(folders):
        if folder_names is None:
            classname = folder
        elif folder in folder_names:
            classname = folder_names[folder]
        else:
            raise DataError(f"class folder {root / folder} has no entry in the class-name list."
                            + _hint_suffix(hint))
        classnames.append(classname)
        items.extend(Datum(str(p), label, classname) for p in list_class_images(root / folder))
    return items, classnames


def read_coop_split_json(
    split_file: str | os.PathLike, image_dir: str | os.PathLike, hint: str | None = None
) -> dict[str, list[Datum]]:
    """Read a CoOp split file `{"train"|"val"|"test": [[rel_path, label, classname], ...]}`.

    Paths are joined onto `image_dir`. Returns a dict with the three split names.
    """
    split_file = require_file(split_file, "split file", hint)
    try:
        raw = json.loads(split_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"split file {split_file} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict) or any(k not in raw for k in SPLIT_NAMES):
        raise DataError(f"split file {split_file} must be a JSON object with keys "
                        f"'train', 'val' and 'test'")
    image_dir = Path(image_dir)
    splits: dict[str, list[Datum]] = {}
    for name in SPLIT_NAMES:
        entries = raw[name]
        items = []
        for position, entry in enumerate(entries):
            if not (isinstance(entry, (list, tuple)) and len(entry) == 3):
                raise DataError(f"split file {split_file}: {name}[{position}] must be "
                                f"[relative_path, label, classname], got {entry!r}")
            rel_path, label, classname = entry
            items.append(Datum(str(image_dir / rel_path), int(label), str(classname)))
        splits[name] = items
    return splits


def read_lines(path: str | os.PathLike, what: str, hint: str | None = None) -> list[str]:
    """Non-empty, stripped lines of a text file (missing file -> DataError naming it)."""
    path = require_file(path, what, hint)
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def read_wnid_classnames(path: str | os.PathLike, hint: str | None = None) -> dict[str, str]:
    """Read ImageNet-style `classnames.txt` ("<wnid> <class name>" per line), keeping file order."""
    names: dict[str, str] = {}
    for number, line in enumerate(read_lines(path, "class-name file", hint), start=1):
        wnid, _, classname = line.partition(" ")
        if not classname.strip():
            raise DataError(f"{path}, line {number}: expected '<wnid> <class name>', got {line!r}")
        names[wnid] = classname.strip()
    return names
