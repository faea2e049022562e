"""Run directories.

    <output_dir>/<experiment>/<YYYYmmdd-HHMMSS>/      (under SLURM: slurm-<job>-<config hash>/)
        config.yaml        resolved config of the run (of its latest attempt)
        status.json        running / finished / failed / preempted, and every attempt
        checkpoints/       last.ckpt (+ last-previous.ckpt), best-*.ckpt when checkpoint.monitor is set
        metrics/<attempt>/ CSV logger (metrics.csv, hparams.yaml); one folder per attempt
        eval/              metrics.json and metrics.md written by train.py / eval.py
        exports/           safetensors + JSON exports
        wandb/             W&B files (offline runs can be synced from here)
        train.log          Python log of the run, every attempt appended

Under SLURM (``SLURM_JOB_ID`` set, not an interactive ``bash`` job) the folder is named after the
job and a hash of the config: every task of a multi-node job computes the same name, and a
requeued job finds its own folder again and resumes it. Light: no torch.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Optional

from clipcore.signals import slurm_job_id

# Set by the launching process for DDP worker processes started by Lightning, which re-run
# the command line: they join the run folder and checkpoint that rank 0 chose.
RUN_DIR_ENV = "CLIPCORE_RUN_DIR"
RESUME_CKPT_ENV = "CLIPCORE_RESUME_CKPT"
ATTEMPT_ENV = "CLIPCORE_ATTEMPT"
CHECKPOINT_DIR = "checkpoints"
LAST = "last.ckpt"
PREVIOUS = "last-previous.ckpt"


def experiment_dir(output_dir: str, experiment: str) -> Path:
    return Path(output_dir) / experiment


def run_dir_of_checkpoint(ckpt: Path) -> Path | None:
    ckpt = Path(ckpt).resolve()
    if ckpt.parent.name == CHECKPOINT_DIR and (ckpt.parent.parent / "config.yaml").is_file():
        return ckpt.parent.parent
    return None


def run_folders(output_dir: str, experiment: str) -> list[Path]:
    """Run folders of ``experiment`` (they hold a config.yaml), oldest first."""
    root = experiment_dir(output_dir, experiment)
    if not root.is_dir():
        return []
    runs = [p.parent for p in root.glob("*/config.yaml")]

    def created(run: Path) -> tuple:
        try:
            stamp = json.loads((run / "status.json").read_text()).get("created", "")
        except (OSError, ValueError):
            stamp = ""
        return (stamp or time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(run.stat().st_mtime)), run.name)

    return sorted(runs, key=created)


def is_launch_child() -> bool:
    """A DDP worker process started by the launching process (it inherits the run folder)."""
    return bool(os.environ.get(RUN_DIR_ENV))


def launch_rank() -> int:
    """Global rank of this process as the launcher set it (before torch.distributed exists)."""
    for variable in ("RANK", "SLURM_PROCID"):
        value = os.environ.get(variable)
        if value is not None and value.isdigit():
            if variable == "SLURM_PROCID" and int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
                continue
            return int(value)
    return int(os.environ.get("LOCAL_RANK", "0") or 0) if is_launch_child() else 0


def config_hash(plain_config: dict) -> str:
    return hashlib.sha256(json.dumps(plain_config, sort_keys=True, default=str).encode()).hexdigest()[:10]


def slurm_run_dir(output_dir: str, experiment: str, plain_config: dict) -> Optional[Path]:
    """The run folder of this SLURM job for this config (None outside a batch job)."""
    job = slurm_job_id()
    if job is None or os.environ.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return None
    return experiment_dir(output_dir, experiment) / f"slurm-{job}-{config_hash(plain_config)}"


def new_run_dir(output_dir: str, experiment: str) -> Path:
    """A fresh, empty run folder named by the time (``-1``, ``-2`` ... on collisions)."""
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
