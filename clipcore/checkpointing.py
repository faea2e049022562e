"""Checkpoints during training: when they are written, how, and what they restore.

- :class:`RunCheckpoint` writes ``checkpoints/last.ckpt`` at the end of every epoch, every
  ``checkpoint.every_n_steps`` optimiser steps and/or every ``checkpoint.every_n_minutes``, and
  when a stop signal arrives (then it raises :class:`~clipcore.signals.RunPreempted`). Mid-epoch
  checkpoints are taken only at optimiser-step boundaries and never on an epoch's last batch
  (the epoch-end checkpoint follows), so every checkpoint is a state the loop can resume exactly.
- :class:`AtomicCheckpointIO` writes to a temporary file and renames it into place; the previous
  ``last.ckpt`` is kept as ``last-previous.ckpt`` (a hard link, so ``last.ckpt`` exists at every
  moment). Loading names the file in every error.
- :class:`RNGStateCallback` saves and restores the python, numpy and torch generators.

What the data order depends on travels with the datamodule's state (``clipcore.data.resume``).
"""
from __future__ import annotations

import os
import random
import shutil
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, Checkpoint

from clipcore.checkpoint_file import load_checkpoint
from clipcore.config import ConfigError
from clipcore.data.resume import training_position
from clipcore.rundir import CHECKPOINT_DIR, LAST, PREVIOUS
from clipcore.signals import RunPreempted, StopRequest, signal_name
from clipcore.status import record_checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Temporary file + rename; the replaced ``last.ckpt`` survives as ``last-previous.ckpt``."""

    def save_checkpoint(self, checkpoint: dict, path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        previous_tmp = path.with_name(f".{PREVIOUS}.tmp-{os.getpid()}")
        try:
            torch.save(checkpoint, tmp)
            if path.name == LAST and path.is_file():
                _link_or_copy(path, previous_tmp)
                os.replace(previous_tmp, path.with_name(PREVIOUS))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
            previous_tmp.unlink(missing_ok=True)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: Optional[bool] = None) -> dict:
        # Our checkpoints hold tensors and plain containers only: the safe loader always suffices.
        return load_checkpoint(path)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # file systems without hard links
        shutil.copy2(source, target)


def remove_stale_temporary_files(run_dir: Path) -> list[Path]:
    """Temporary checkpoint files left by a process that died while writing (never complete)."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    stale = sorted(folder.glob(".*.tmp-*")) if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


class RunCheckpoint(Checkpoint):
    """``last.ckpt`` at every epoch end, every N steps / minutes, and on a stop request.

    It is a ``Checkpoint`` so that Lightning calls its ``on_train_epoch_end`` after the module's
    own (PromptSRC's prompt aggregation must be in the epoch-end checkpoint).
    """

    def __init__(self, run_dir: Path, stop: StopRequest, every_n_steps: Optional[int] = None,
                 every_n_minutes: Optional[float] = None):
        if every_n_steps is not None and every_n_steps < 1:
            raise ConfigError(f"checkpoint.every_n_steps={every_n_steps}: expected >= 1 or null")
        if every_n_minutes is not None and every_n_minutes <= 0:
            raise ConfigError(f"checkpoint.every_n_minutes={every_n_minutes}: expected > 0 or null")
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / CHECKPOINT_DIR / LAST
        self.stop = stop
        self.every_n_steps = every_n_steps
        self.every_n_minutes = every_n_minutes
        self._saved_at = time.monotonic()

    def on_train_start(self, trainer, pl_module) -> None:
        # Lightning installs its own SIGTERM handler right before training: take it back, and
        # forward stop signals to the DDP worker processes it launched, as it would.
        launcher = trainer.strategy.launcher
        if trainer.is_global_zero and launcher is not None and hasattr(launcher, "kill"):
            self.stop.forward = launcher.kill
        self.stop.install()
        self._saved_at = time.monotonic()
        if self._stop_requested(trainer):  # the signal came while the run was being set up
            self._preempt(trainer, save=trainer.global_step > 0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.fast_dev_run or trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # mid-accumulation: the optimiser has not stepped yet
        if self._stop_requested(trainer):
            self._preempt(trainer, save=True)
        if self._due(trainer):
            self.save(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.fast_dev_run:
            return
        self.save(trainer)
        if self._stop_requested(trainer):
            self._preempt(trainer, save=False)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        finish_saved_epoch(trainer, checkpoint)

    def _due(self, trainer) -> bool:
        due = bool(self.every_n_steps) and trainer.global_step % self.every_n_steps == 0
        if self.every_n_minutes:
            timed = time.monotonic() - self._saved_at >= 60.0 * self.every_n_minutes
            # Clocks differ between ranks; rank 0 decides for all (saving is collective).
            due = due or trainer.strategy.broadcast(timed, src=0)
        return due

    def _stop_requested(self, trainer) -> bool:
        if trainer.world_size > 1:
            return trainer.strategy.reduce_boolean_decision(self.stop.requested, all=False)
        return self.stop.requested

    def save(self, trainer) -> None:
        # The full state (optimiser, loops, callbacks): resume continues exactly. Said explicitly,
        # else Lightning logs that it assumed so at every save.
        trainer.save_checkpoint(self.path, weights_only=False)
        self._saved_at = time.monotonic()
        if trainer.is_global_zero:
            record_checkpoint(self.run_dir, training_position(trainer)["epoch"], trainer.global_step, self.path)

    def _preempt(self, trainer, save: bool) -> None:
        if save:
            self.save(trainer)
        signum = self.stop.signum or 15
        saved = f"checkpoint {self.path}" if save or self.path.is_file() else "no checkpoint yet"
        position = training_position(trainer)
        raise RunPreempted(signum, f"received {signal_name(signum)}: stopped at epoch {position['epoch']}, "
                                   f"step {trainer.global_step} ({saved})")


class RNGStateCallback(Callback):
    """Save and restore python, numpy and torch (CPU + CUDA) generator states with the checkpoint.

    Lightning restores the optimizer and the loop position but not the generators; without this a
    resumed run draws other random numbers than the uninterrupted one.
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


def finish_saved_epoch(trainer, checkpoint: dict) -> None:
    """Resume iteration-based training (``trainer.max_steps`` set) after an epoch-end checkpoint.

    The epoch-end checkpoint is written in ``on_train_epoch_end``, before Lightning counts the
    epoch completed. Epoch-based resumes complete it on restart; iteration-based ones (Lightning
    2.6, ``FitLoop.on_run_start``) do not, so the restored epoch loop finds its batches done,
    runs an empty epoch and counts it: a run resumed with a raised ``max_steps`` stopped at
    ``max_epochs`` without training. Marking the saved epoch completed, and the epoch loop's
    current batch count zero, makes the resume start the next epoch, as for epoch-based runs.
    Mid-epoch checkpoints are left as they are.
    """
    if trainer.max_steps == -1:
        return
    fit = checkpoint.get("loops", {}).get("fit_loop")
    if not fit or "epoch_progress" not in fit:
        return
    current = fit["epoch_progress"]["current"]
    if not (current["processed"] == current["started"] and current["completed"] == current["processed"] - 1):
        return  # not saved at an epoch end
    for part in ("total", "current"):
        fit["epoch_progress"][part]["completed"] = fit["epoch_progress"][part]["processed"]
    batches = fit.get("epoch_loop.batch_progress")
    if batches is not None:
        batches["current"] = {key: 0 for key in batches["current"]}
        batches["is_last_batch"] = False
