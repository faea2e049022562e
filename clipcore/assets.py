"""Published data files (concept dictionaries, class lists, SSB splits): find, verify, download.

Lookup order for an asset ``name`` (e.g. ``spectralgcd/openimages_dictionary.csv``):

1. ``$CLIPCORE_ASSETS_DIR/<name>`` -- a local copy (CI points it at ``../shared/assets``);
2. ``<cache root>/assets/<name>`` (``$CLIPCORE_CACHE_DIR``, else ``$XDG_CACHE_HOME/clipcore``,
   else ``~/.cache/clipcore``; see ``clipcore.paths``);
3. download from the upstream repository into the cache.

Every file is checked against the sha256 pinned below before it is returned; a mismatch is an
error, never a silent re-download or overwrite. Downloads go to a temporary file in the cache
folder and are renamed into place only after the hash matches, so an interrupted or tampered
download leaves nothing behind.

The readers reproduce how the published pipelines parse these files (spectralgcd.md §1.1-1.2,
§6); the SSB split pickles are read with an unpickler that refuses every global.

CLI: ``python -m clipcore.assets list`` and ``python -m clipcore.assets fetch [names...]``.
"""
from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import io
import logging
import os
import pickle
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from clipcore.classnames import readable_classname
from clipcore.errors import UserError
from clipcore.paths import cache_root

log = logging.getLogger(__name__)

ASSETS_DIR_ENV = "CLIPCORE_ASSETS_DIR"
DOWNLOAD_TIMEOUT_S = 30
_SPECTRALGCD_RAW = "https://raw.githubusercontent.com/miccunifi/SpectralGCD/fff0780"


class AssetError(UserError, RuntimeError):
    """An asset is unknown, unreachable, or does not match its pinned sha256."""


@dataclass(frozen=True)
class Asset:
    name: str  # path relative to the assets root, also the cache layout
    url: str
    sha256: str
    description: str


# (name, path in miccunifi/SpectralGCD, sha256, description)
_SPECTRALGCD_FILES = (
    ("spectralgcd/openimages_dictionary.csv", "dictionaries/openimages_dictionary.csv",
     "286bc637c886dea1daf9083b1ab07ca5e8ffcb8e96209d41e5ed1d21d8047063",
     "Open Images concept dictionary (20,930 names; also the KDPL-CA dictionary)"),
    ("spectralgcd/textgcd_tags_dictionary.csv", "dictionaries/textgcd_tags_dictionary.csv",
     "1c773126012bc9a6527c47bbd78ac4d06e60d21e66e40f144a4084a66f825bde",
     "TextGCD tags concept dictionary (22,131 names; SpectralGCD default)"),
    ("spectralgcd/imagenet_classes.txt", "dataset_class_names/imagenet_classes.txt",
     "1f386e0d1cb6e28b9c2dac651c3dea6801e98ad1b41a14ce6bb1a093d72069f5",
     "ImageNet-1k class names, one per line (1000)"),
    ("ssb_splits/cub_osr_splits.pkl", "data/ssb_splits/cub_osr_splits.pkl",
     "48bdcaa05603d932037738d3df776ab500945e9b7aeff85f4668305bf71bd1e7",
     "Semantic Shift Benchmark split, CUB-200"),
    ("ssb_splits/scars_osr_splits.pkl", "data/ssb_splits/scars_osr_splits.pkl",
     "28d471f0fb9e2c773e1255b8b447e542974f6617952203056a0635c638513d39",
     "Semantic Shift Benchmark split, Stanford Cars"),
    ("ssb_splits/aircraft_osr_splits.pkl", "data/ssb_splits/aircraft_osr_splits.pkl",
     "2a2481307cec7821721d6a73c1a3ca77db7e657649e043d1a83aa7dd81a5a194",
     "Semantic Shift Benchmark split, FGVC-Aircraft"),
)

ASSETS: dict[str, Asset] = {
    name: Asset(name, f"{_SPECTRALGCD_RAW}/{upstream}", sha256, description)
    for name, upstream, sha256, description in _SPECTRALGCD_FILES
}


def get_asset(name: str) -> Asset:
    """The registry entry for ``name``; AssetError listing the known names otherwise."""
    try:
        return ASSETS[name]
    except KeyError:
        raise AssetError(f"unknown asset {name!r}; known assets: {', '.join(ASSETS)}") from None


def assets_cache() -> Path:
    """``<cache root>/assets`` (``clipcore.paths``: ``$CLIPCORE_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/clipcore``, else ``~/.cache/clipcore``)."""
    return cache_root() / "assets"


def _local_root() -> Path | None:
    value = os.environ.get(ASSETS_DIR_ENV)
    return Path(value).expanduser() if value else None


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    # Keyed by size and mtime as well as the path, so a file replaced in place is re-hashed.
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, computed once per process per (path, size, mtime)."""
    stat = path.stat()
    return _file_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def _verify(asset: Asset, path: Path) -> Path:
    actual = sha256_of(path)
    if actual != asset.sha256:
        raise AssetError(
            f"sha256 mismatch for {path} (asset {asset.name}): expected {asset.sha256}, "
            f"got {actual}. The file is corrupt or not the published version; replace or "
            f"delete it (nothing was overwritten)."
        )
    return path


def _download(asset: Asset, destination: Path) -> Path:
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".part",
                                        dir=destination.parent)
    except OSError as err:
        raise AssetError(
            f"cannot write to the asset cache {destination.parent} ({err}); set XDG_CACHE_HOME "
            f"to a writable folder or {ASSETS_DIR_ENV} to a folder holding {asset.name}"
        ) from err
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(asset.url, timeout=DOWNLOAD_TIMEOUT_S) as response:
                    for chunk in iter(lambda: response.read(1 << 20), b""):
                        digest.update(chunk)
                        out.write(chunk)
            except OSError as err:  # URLError, timeouts and refused sockets are all OSErrors
                raise AssetError(
                    f"could not download asset {asset.name} from {asset.url}: {err}. If this "
                    f"machine is offline, set {ASSETS_DIR_ENV} to a folder holding {asset.name} "
                    f"or place the file at {destination}."
                ) from err
        actual = digest.hexdigest()
        if actual != asset.sha256:
            raise AssetError(
                f"sha256 mismatch for asset {asset.name} downloaded from {asset.url}: expected "
                f"{asset.sha256}, got {actual}; the download was discarded."
            )
        os.replace(tmp, destination)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("downloaded %s to %s", asset.name, destination)
    return destination


def asset_path(name: str, *, download: bool = True) -> Path:
    """Path of a verified copy of asset ``name`` (local copy, then cache, then download)."""
    asset = get_asset(name)
    local_root = _local_root()
    if local_root is not None:
        local = local_root / name
        if local.is_file():
            return _verify(asset, local)
        log.debug("%s not in %s=%s; trying the cache", name, ASSETS_DIR_ENV, local_root)
    cached = assets_cache() / name
    if cached.is_file():
        return _verify(asset, cached)
    if not download:
        raise AssetError(
            f"asset {name} is not available locally; run `python -m clipcore.assets fetch {name}`,"
            f" set {ASSETS_DIR_ENV}, or place the file at {cached}"
        )
    return _download(asset, cached)


# ---------------------------------------------------------------------------------------------
# Readers


def read_dictionary_csv(path: str | os.PathLike) -> list[str]:
    """The ``ClassName`` column of a dictionary CSV, values verbatim (surrounding spaces kept)."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "ClassName" not in reader.fieldnames:
            raise AssetError(f"{path}: expected a CSV with a 'ClassName' header, "
                             f"got header {reader.fieldnames}")
        return [str(row["ClassName"]) for row in reader]


def load_dictionary(name_or_path: str, key: str) -> list[str]:
    """A ``ClassName`` CSV given as a file path or as an asset name; ``key`` is the config key that
    named it (for the error message)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return read_dictionary_csv(path)
    if name_or_path in ASSETS:
        return read_dictionary_csv(asset_path(name_or_path))
    csv_assets = ", ".join(n for n in ASSETS if n.endswith(".csv"))
    raise AssetError(f"{key}={name_or_path!r}: no such file, and not an asset name ({csv_assets})")


def dedupe_case_insensitive(names: Iterable[str]) -> list[str]:
    """Drop names equal to an earlier one up to case (``str.lower``), keeping first and order."""
    seen: set[str] = set()
    unique = []
    for name in names:
        key = name.lower()
        if key not in seen:
            seen.add(key)
            unique.append(name)
    return unique


def merge_concepts(dictionary: Iterable[str], extra_names: Iterable[str]) -> list[str]:
    """SpectralGCD's concept list: de-duplicated dictionary + missing extras (``_`` -> space).

    Mirrors ``extract_class_names``: extras (the known class names) are rewritten with spaces
    for underscores, compared case-insensitively, and appended in order when absent.
    """
    merged = dedupe_case_insensitive(dictionary)
    seen = {name.lower() for name in merged}
    for name in extra_names:
        name = readable_classname(str(name))
        if name.lower() not in seen:
            seen.add(name.lower())
            merged.append(name)
    return merged


def read_class_list_txt(path: str | os.PathLike) -> list[str]:
    """One class name per line (the last line may lack a newline); blank lines are an error."""
    path = Path(path)
    names = path.read_text(encoding="utf-8").splitlines()
    blank = [i + 1 for i, name in enumerate(names) if not name.strip()]
    if blank:
        raise AssetError(f"{path}: blank class name on line(s) {blank[:5]}")
    return names


class _RestrictedUnpickler(pickle.Unpickler):
    """Refuses every global: the SSB splits contain only dicts, lists, tuples, ints and strs."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(
            f"refusing to load global {module}.{name}: split files may contain only plain "
            f"containers and numbers"
        )


def _plain_ints(value, where: str) -> list[int]:
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise AssetError(f"{where}: expected a list of class ids (ints)")
    return [int(v) for v in value]


def load_ssb_split(path: str | os.PathLike) -> dict:
    """An SSB ``*_osr_splits.pkl`` as ``{'known_classes': [...], 'unknown_classes': {...}}``.

    ``unknown_classes`` maps 'Hard', 'Medium', 'Easy' to lists of ints (pickle order kept: the
    reference uses it as the label order). Other keys are kept as loaded.
    """
    path = Path(path)
    try:
        data = _RestrictedUnpickler(io.BytesIO(path.read_bytes())).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise AssetError(f"{path}: not a valid SSB split file: {err}") from err
    if not isinstance(data, dict) or "known_classes" not in data or "unknown_classes" not in data:
        raise AssetError(f"{path}: expected a dict with 'known_classes' and 'unknown_classes'")
    unknown = data["unknown_classes"]
    levels = ("Hard", "Medium", "Easy")
    missing = [k for k in levels if not isinstance(unknown, dict) or k not in unknown]
    if missing:
        raise AssetError(f"{path}: 'unknown_classes' lacks difficulty level(s) {missing}")
    result = dict(data)
    result["known_classes"] = _plain_ints(data["known_classes"], f"{path}: known_classes")
    result["unknown_classes"] = {
        level: _plain_ints(ids, f"{path}: unknown_classes[{level!r}]")
        for level, ids in unknown.items()
    }
    return result


# ---------------------------------------------------------------------------------------------
# CLI


def _status(name: str) -> str:
    try:
        return str(asset_path(name, download=False))
    except AssetError as err:
        return f"missing or invalid ({err})"


def main(argv: Sequence[str] | None = None, prog: str = "python -m clipcore.assets") -> int:
    """``list`` shows every asset and where it resolves; ``fetch`` downloads and verifies."""
    parser = argparse.ArgumentParser(prog=prog,
                                     description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="show known assets and where each resolves")
    fetch = sub.add_parser("fetch", help="download (if needed) and verify assets")
    fetch.add_argument("names", nargs="*", help="asset names (default: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if args.command == "list":
        for asset in ASSETS.values():
            log.info("%s\n  %s\n  sha256 %s\n  -> %s", asset.name, asset.description,
                     asset.sha256, _status(asset.name))
        return 0
    failures = 0
    for name in args.names or list(ASSETS):
        try:
            log.info("%s: ok (%s)", name, asset_path(name))
        except AssetError as err:
            failures += 1
            log.error("%s: %s", name, err)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
