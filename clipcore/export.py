"""Portable exports of what a run learned: ``weights.safetensors`` + ``export.json``.

No pickle anywhere: tensors go to safetensors, everything else to JSON. An export is written to
a temporary folder and renamed into place, and an existing export is never overwritten.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from clipcore.errors import UserError

FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.safetensors"
METADATA_FILE = "export.json"


class ExportError(UserError, RuntimeError):
    pass


def write_export(directory: str | Path, tensors: dict[str, torch.Tensor], metadata: dict, *,
                 weights_file: str = WEIGHTS_FILE, metadata_file: str = METADATA_FILE) -> Path:
    """A new folder with ``weights_file`` (safetensors) and ``metadata_file`` (JSON, with
    ``format_version`` and ``created`` added)."""
    directory = Path(directory)
    if directory.exists():
        raise ExportError(f"export folder {directory} already exists; choose another path (nothing was written)")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        # safetensors wants contiguous, non-shared tensors.
        save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, tmp / weights_file)
        full = {"format_version": FORMAT_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **metadata}
        (tmp / metadata_file).write_text(json.dumps(full, indent=2, sort_keys=True, default=str))
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def read_export(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    directory = Path(directory)
    meta_file, weights_file = directory / METADATA_FILE, directory / WEIGHTS_FILE
    for f in (meta_file, weights_file):
        if not f.is_file():
            raise ExportError(f"{f} not found: an export folder holds {METADATA_FILE} and {WEIGHTS_FILE}")
    try:
        metadata = json.loads(meta_file.read_text())
    except json.JSONDecodeError as exc:
        raise ExportError(f"{meta_file} is not valid JSON: {exc}") from exc
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ExportError(
            f"{meta_file}: format_version {metadata.get('format_version')!r}, this version reads {FORMAT_VERSION}"
        )
    for key in ("method", "config"):
        if key not in metadata:
            raise ExportError(f"{meta_file}: missing key '{key}'")
    try:
        return load_file(str(weights_file)), metadata
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise ExportError(f"{weights_file} is not a readable safetensors file ({exc}); re-export it "
                          f"with `eval.py export --ckpt <run>/checkpoints/last.ckpt`") from exc
