"""Checkpoint plumbing: atomic writes and RNG state, so a resumed run continues exactly."""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file in the same folder, then rename: a crash never leaves half a file."""

    def save_checkpoint(self, checkpoint: dict, path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            torch.save(checkpoint, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


class RNGStateCallback(Callback):
    """Save and restore python, numpy and torch (CPU + CUDA) generator states with the checkpoint.

    Lightning restores the optimizer and the loop position but not the generators; without this a
    resumed run draws other augmentations than the uninterrupted one.
    """

    def state_dict(self) -> dict:
        np_state = np.random.get_state()
        state = {
            "python": random.getstate(),
            "numpy": {"kind": np_state[0], "keys": torch.from_numpy(np_state[1].copy()),
                      "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        random.setstate(state["python"])
        np_state = state["numpy"]
        np.random.set_state((np_state["kind"], np_state["keys"].numpy(), np_state["pos"],
                             np_state["has_gauss"], np_state["gauss"]))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
