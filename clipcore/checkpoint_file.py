"""Reading checkpoint files with messages that say what is wrong with them.

:func:`verify_checkpoint` is light (zipfile only, no torch): a checkpoint written by ``torch.save``
is a zip archive whose members carry CRCs, so a truncated or bit-flipped file is caught before
anything is loaded, and files that are not checkpoints at all (text, safetensors, an export
folder) are named as what they are. :func:`load_checkpoint` then reads it with torch's safe
loader (our checkpoints hold tensors and plain containers only) and checks it is one of ours.
"""
from __future__ import annotations

import struct
import zipfile
from pathlib import Path

from clipcore.errors import CheckpointError

EXPECTED = ("a Lightning checkpoint written by train.py (a .ckpt zip archive holding "
            "'state_dict' and 'hyper_parameters.config')")


def _looks_like_safetensors(head: bytes) -> bool:
    if len(head) < 10:
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return 2 <= length < 100_000_000 and head[8:9] == b"{"


def verify_checkpoint(path: str | Path) -> Path:
    """Raise :class:`CheckpointError` naming ``path`` unless it is an intact torch zip archive."""
    path = Path(path)
    if path.is_dir():
        hint = (" (it holds export.json: evaluate an export with --export)"
                if (path / "export.json").is_file() else "")
        raise CheckpointError(f"{path} is a folder, not a checkpoint file{hint}; expected {EXPECTED}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; expected {EXPECTED}")
    with open(path, "rb") as handle:
        head = handle.read(16)
    if not head:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); expected {EXPECTED}")
    if _looks_like_safetensors(head):
        raise CheckpointError(f"{path} is a safetensors file (an export's weights?), not a checkpoint; "
                              f"evaluate an export folder with --export DIR, or pass {EXPECTED}")
    if not zipfile.is_zipfile(path):
        kind = "a text file" if _is_text(head) else "not a zip archive"
        if head[:2] == b"PK":
            kind = "truncated or corrupt (its zip directory is missing)"
        raise CheckpointError(f"checkpoint {path} is {kind}; expected {EXPECTED}")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if not any(name.endswith("/data.pkl") or name == "data.pkl" for name in names):
                raise CheckpointError(f"{path} is a zip archive but not a torch checkpoint; expected {EXPECTED}")
            broken = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({exc}); expected {EXPECTED}") from exc
    if broken is not None:
        raise CheckpointError(f"checkpoint {path} is corrupt (member {broken!r} fails its CRC check); "
                              f"expected {EXPECTED}")
    return path


def _is_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def load_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict of ``path`` (on the CPU), verified and checked to be one of ours."""
    import torch

    path = verify_checkpoint(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for unreadable archives
        raise CheckpointError(f"could not read checkpoint {path}: {exc}; expected {EXPECTED}") from exc
    config = checkpoint.get("hyper_parameters", {}).get("config") if isinstance(checkpoint, dict) else None
    if not isinstance(config, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is a PyTorch file but not a checkpoint of this project "
                              f"(no 'hyper_parameters.config' / 'state_dict'); expected {EXPECTED}")
    return checkpoint

