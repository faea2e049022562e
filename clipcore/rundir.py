"""Run directories.

    <output_dir>/<experiment>/<YYYYmmdd-HHMMSS>/
        config.yaml        resolved config of the run
        checkpoints/       last.ckpt and the best checkpoint(s) (trainable tensors + trainer state)
        metrics/<attempt>/ CSV logger (metrics.csv, hparams.yaml); attempt 0, then 1, 2... per resume
        eval/              metrics.json and metrics.md written by train.py / eval.py
        exports/           safetensors + JSON exports
        wandb/             W&B files (offline runs can be synced from here)
        train.log          Python log of the run
"""
from __future__ import annotations

import os
import time
from pathlib import Path

RUN_DIR_ENV = "CLIPCORE_RUN_DIR"


def experiment_dir(output_dir: str, experiment: str) -> Path:
    return Path(output_dir) / experiment


def latest_checkpoint(output_dir: str, experiment: str) -> Path:
    """``last.ckpt`` of the newest run of ``experiment`` that has one."""
    root = experiment_dir(output_dir, experiment)
    candidates = sorted(root.glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise FileNotFoundError(
            f"resume=last: no run of experiment '{experiment}' has checkpoints/last.ckpt under {root}"
        )
    return candidates[-1]


def run_dir_of_checkpoint(ckpt: Path) -> Path | None:
    ckpt = Path(ckpt).resolve()
    if ckpt.parent.name == "checkpoints" and (ckpt.parent.parent / "config.yaml").is_file():
        return ckpt.parent.parent
    return None


def new_run_dir(output_dir: str, experiment: str) -> Path:
    """A fresh run folder; DDP worker processes reuse the one rank 0 made (via the environment)."""
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited:
        return Path(inherited)
    root = experiment_dir(output_dir, experiment)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        candidate = root / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            candidate.mkdir(parents=True, exist_ok=False)
            return candidate
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a run folder under {root}")
