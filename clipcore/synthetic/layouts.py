"""Write ShapeWorld to disk in the layouts the real dataset readers consume.

CoOp layout (``write_coop_layout``)::

    root/<name>/images/<class_dir>/<instance>.png
    root/<name>/split_zhou_ShapeWorld.json   {"train"|"val"|"test": [[rel_path, label, classname]]}

``rel_path`` is relative to ``root/<name>/images`` (CoOp's ``image_dir``), as in
``split_zhou_OxfordPets.json``; ``label`` is the class index in ``world.classnames`` and
``classname`` the plain-English name ("red triangle").

GCD layout (``write_gcd_layout``), ImageFolder-style::

    root/<name>/{train,test}/<class_dir>/<instance>.png
    root/<name>/splits.json  {"classes": [class_dir, ...],            # sorted = ImageFolder order
                              "classnames": ["red triangle", ...],     # same order
                              "known_classes": [int, ...],             # indices into "classes"
                              "unknown_classes": [int, ...]}

Both writers are idempotent: a directory holding a ``.complete.json`` marker with the same
parameters is returned untouched. Otherwise the tree is written into a temporary sibling and
renamed into place, so a reader never sees half a dataset. A directory without our marker is
never deleted (it may be someone's data): that is an error.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from clipcore.synthetic.world import ShapeWorld

log = logging.getLogger(__name__)

MARKER = ".complete.json"
COOP_SPLIT_FILE = "split_zhou_ShapeWorld.json"
GCD_SPLIT_FILE = "splits.json"


def class_dir(classname: str) -> str:
    return classname.replace(" ", "_")


def _params_hash(params: dict) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def _write_once(target: Path, params: dict, fill: Callable[[Path], None]) -> Path:
    """Create ``target`` by ``fill(tmp_dir)`` + rename unless a matching marker is present."""
    digest = _params_hash(params)
    marker = target / MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text()).get("hash") == digest:
                return target
        except json.JSONDecodeError:
            pass
    elif target.exists():
        raise FileExistsError(
            f"{target} exists but was not written by clipcore.synthetic (no {MARKER}); "
            "refusing to overwrite it. Choose another root or remove it yourself.")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        fill(tmp)
        (tmp / MARKER).write_text(json.dumps({"hash": digest, "params": params}, indent=1))
        if target.exists():  # stale synthetic tree (our marker, other parameters): replace it
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            target.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            tmp.rename(target)
        except OSError:
            # Another process finished the same tree first; keep theirs if it matches.
            if json.loads((target / MARKER).read_text()).get("hash") != digest:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("wrote %s", target)
    return target


def _save_images(world: ShapeWorld, out_dir: Path, split: str, n_per_class: int,
                 class_ids: list[int] | None = None) -> list[tuple[str, int, str]]:
    """Render ``split`` into ``out_dir/<class_dir>/<seed>.png``; returns (rel_path, label, name)."""
    records = []
    for label in class_ids if class_ids is not None else range(world.num_classes):
        name = world.classnames[label]
        folder = out_dir / class_dir(name)
        folder.mkdir(parents=True, exist_ok=True)
        for i, seed in enumerate(world.instance_seeds(split, n_per_class)):
            rel = f"{class_dir(name)}/{split}_{i:05d}.png"
            world.render(label, seed).save(out_dir / rel)
            records.append((rel, label, name))
    return records


def write_coop_layout(root: str | Path, world: ShapeWorld, n_train_per_class: int = 16,
                      n_val: int = 4, n_test: int = 20, name: str = "shapeworld") -> Path:
    """Write the CoOp layout under ``root/name``; ``n_val``/``n_test`` are per class."""
    params = {"layout": "coop", "world": world.params(), "n_train_per_class": n_train_per_class,
              "n_val": n_val, "n_test": n_test}

    def fill(tmp: Path) -> None:
        split = {s: [list(r) for r in _save_images(world, tmp / "images", s, n)]
                 for s, n in (("train", n_train_per_class), ("val", n_val), ("test", n_test))}
        (tmp / COOP_SPLIT_FILE).write_text(json.dumps(split))

    return _write_once(Path(root) / name, params, fill)


def gcd_class_split(world: ShapeWorld, n_known: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """Known / unknown class ids (sorted), a seeded random choice of ``n_known`` classes."""
    if not 0 < n_known < world.num_classes:
        raise ValueError(f"n_known must be in 1..{world.num_classes - 1}, got {n_known}")
    perm = np.random.default_rng([world.seed, seed, 7]).permutation(world.num_classes)
    return sorted(perm[:n_known].tolist()), sorted(perm[n_known:].tolist())


def write_gcd_layout(root: str | Path, world: ShapeWorld, n_train_per_class: int = 40,
                     n_test_per_class: int = 20, n_known: int | None = None,
                     split_seed: int = 0, name: str = "shapeworld_gcd") -> Path:
    """Write the GCD layout under ``root/name``; half the classes are known by default.

    The train folder holds every class (the labelled/unlabelled split of known-class images is
    the reader's job, as in the GCD protocols); ``splits.json`` names which classes are known.
    """
    n_known = world.num_classes // 2 if n_known is None else n_known
    known, unknown = gcd_class_split(world, n_known, split_seed)
    params = {"layout": "gcd", "world": world.params(), "n_train_per_class": n_train_per_class,
              "n_test_per_class": n_test_per_class, "known": known}

    def fill(tmp: Path) -> None:
        _save_images(world, tmp / "train", "train", n_train_per_class)
        _save_images(world, tmp / "test", "test", n_test_per_class)
        # Indices refer to the sorted folder names, i.e. torchvision ImageFolder's class order.
        folders = sorted(class_dir(c) for c in world.classnames)
        by_folder = {class_dir(c): i for i, c in enumerate(world.classnames)}
        names = [world.classnames[by_folder[f]] for f in folders]
        to_sorted = {by_folder[f]: i for i, f in enumerate(folders)}
        splits = {"classes": folders, "classnames": names,
                  "known_classes": sorted(to_sorted[c] for c in known),
                  "unknown_classes": sorted(to_sorted[c] for c in unknown)}
        (tmp / GCD_SPLIT_FILE).write_text(json.dumps(splits, indent=1))

    return _write_once(Path(root) / name, params, fill)
