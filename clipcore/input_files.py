"""The local files a run's config names (weight files, model configs, dictionaries, ``local-dir:``
bundles), recorded when the run starts, so that a finished run is not reused after one of them was
replaced under the same path (the protocol runner reuses runs whose config is equal, and a path in
a config says nothing of what the file held).

Each file is recorded by size, modification time and sha256. A file whose size and modification
time are unchanged is taken as unchanged without reading it (as ``make`` decides); otherwise its
content decides, so a file rewritten with the same bytes (the demo writes its dictionary on every
call) is still the same input. Light: no torch.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from clipcore.io import atomic_write_text
from clipcore.paths import LOCAL_DIR
from clipcore.resume import comparable

log = logging.getLogger(__name__)

STAMPS_FILE = "input_files.json"


def named_files(plain: dict) -> list[Path]:
    """The regular files named by the compared values of a plain config, and every file directly
    inside a ``local-dir:`` bundle it names (directories such as ``data.root`` are not files)."""
    found: set[Path] = set()

    def visit(value) -> None:
        if isinstance(value, dict):
            for item in value.values():
                visit(item)
        elif isinstance(value, list):  # e.g. UPL's labellers: model sections in a list
            for item in value:
                visit(item)
        elif isinstance(value, str) and value.startswith(LOCAL_DIR):
            bundle = Path(value[len(LOCAL_DIR):]).expanduser()
            if bundle.is_dir():
                found.update(p for p in bundle.iterdir() if p.is_file())
        elif isinstance(value, str) and 0 < len(value) < 4096 and Path(value).expanduser().is_file():
            found.add(Path(value).expanduser())

    visit(list(comparable(plain).values()))
    return sorted(found)


def _stamp(path: Path, content: bool = True) -> dict:
    status = path.stat()
    stamp = {"size": status.st_size, "mtime_ns": status.st_mtime_ns}
    if content:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        stamp["sha256"] = digest.hexdigest()
    return stamp


def _recorded(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / STAMPS_FILE).read_text())
    except FileNotFoundError:
        return {}


def _unchanged_on_disk(path: Path, stamp: dict) -> bool:
    """Same size and modification time as ``stamp``: taken as unchanged without reading it."""
    now = _stamp(path, content=False)
    return now == {key: stamp[key] for key in now}


def record_input_files(run_dir: Path, plain: dict) -> None:
    """Write the stamps of the files ``plain`` names into ``<run_dir>/input_files.json``. A
    resumed attempt reuses the digests of files its earlier attempt recorded and that did not
    change since (a multi-GB checkpoint is read once per run, not once per attempt)."""
    earlier = _recorded(run_dir)
    stamps = {}
    for path in named_files(plain):
        name = str(path.resolve())
        stamp = earlier.get(name)
        stamps[name] = stamp if stamp is not None and _unchanged_on_disk(path, stamp) else _stamp(path)
    atomic_write_text(run_dir / STAMPS_FILE, json.dumps(stamps, indent=2, sort_keys=True))


def changed_input_files(run_dir: Path) -> list[str]:
    """The files recorded when ``run_dir`` started whose content differs now. A run recorded by
    no earlier version, or a file that is gone (the run cannot be trained again without it; the
    warning says so), does not count as changed."""
    changed = []
    for name, stamp in _recorded(run_dir).items():
        path = Path(name)
        if not path.is_file():
            log.warning("%s names %s, which is gone; its results are reused as they are", run_dir, name)
            continue
        if _unchanged_on_disk(path, stamp):
            continue
        if path.stat().st_size != stamp["size"] or _stamp(path)["sha256"] != stamp["sha256"]:
            changed.append(name)
    return changed
