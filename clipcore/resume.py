"""Deciding what a ``train.py`` call does: start a run, resume one, or report it finished.

``resume=last`` takes the newest run of the experiment that has an intact checkpoint (or has
finished); ``resume=<run folder>`` or ``resume=<checkpoint file>`` name one. Under SLURM a
requeued job resumes its own run folder without being told (see ``clipcore.rundir``).

Before anything is resumed, the run's stored ``config.yaml`` is compared with the config of the
new command line. Every differing key is refused, listed as ``stored -> new``, unless the user
names it in ``resume_allow`` (``resume_allow=[trainer.max_epochs]``; ``section.*`` names a whole
section). Keys that cannot change a result are never compared: :data:`NEVER_COMPARED`.
A finished run is reported as finished (nothing is retrained) unless its schedule is extended
(``trainer.max_epochs`` or ``trainer.max_steps`` raised and allowed).

The newest intact checkpoint of the run is used: ``last.ckpt``, else ``last-previous.ckpt``
(a corrupt file is named in a warning). Light: no torch.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from clipcore.checkpoint_file import verify_checkpoint
from clipcore.config import ConfigError, read_stored
from clipcore.errors import CheckpointError, UserError
from clipcore.rundir import (
    CHECKPOINT_DIR,
    LAST,
    PREVIOUS,
    RESUME_CKPT_ENV,
    RUN_DIR_ENV,
    is_launch_child,
    run_dir_of_checkpoint,
    run_folders,
    slurm_run_dir,
)
from clipcore.status import FINISHED, RUNNING, process_alive, read_status

log = logging.getLogger(__name__)

# Keys whose value cannot change what a run computes: where it runs from, how it logs, how often
# it checkpoints, how many loader processes it uses.
NEVER_COMPARED = ("resume", "resume_allow", "output_dir", "data.num_workers", "trainer.enable_progress_bar",
                  "logger.*", "checkpoint.every_n_steps", "checkpoint.every_n_minutes")
SCHEDULE_KEYS = ("trainer.max_epochs", "trainer.max_steps")


class ResumeError(UserError):
    """The run to resume does not exist, is in progress, or was run with another config."""


@dataclass
class RunPlan:
    """``run_dir`` None: a new run (``new_dir`` names it when it is fixed in advance, under SLURM)."""

    run_dir: Optional[Path] = None
    checkpoint: Optional[Path] = None
    finished: bool = False
    new_dir: Optional[Path] = None
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    @property
    def resuming(self) -> bool:
        return self.run_dir is not None


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def _matches(key: str, patterns) -> bool:
    return any(key == p or (p.endswith(".*") and key.startswith(p[:-1])) or key.startswith(p + ".")
               for p in patterns)


def comparable(plain: dict) -> dict[str, Any]:
    """Flattened config without the keys that are never compared."""
    return {k: v for k, v in flatten(plain).items() if not _matches(k, NEVER_COMPARED)}


def config_changes(stored: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    """``{key: (stored, new)}`` for every compared key whose value differs (missing = None)."""
    a, b = comparable(stored), comparable(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _format_changes(changes: dict) -> str:
    return "\n".join(f"  {key}: {old!r} -> {new!r}" for key, (old, new) in changes.items())


def _stored_config(run_dir: Path) -> dict:
    path = run_dir / "config.yaml"
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ResumeError(f"cannot read the stored config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ResumeError(f"{path}: expected a mapping")
    try:
        return read_stored(data)
    except ConfigError as exc:
        raise ResumeError(f"{path}: {exc}") from exc


def newest_intact_checkpoint(run_dir: Path) -> Optional[Path]:
    """``last.ckpt``, else ``last-previous.ckpt``; corrupt ones are named in a warning."""
    for name in (LAST, PREVIOUS):
        path = run_dir / CHECKPOINT_DIR / name
        if not path.exists():
            continue
        try:
            return verify_checkpoint(path)
        except CheckpointError as exc:
            log.warning("skipping a corrupt checkpoint: %s", exc)
    return None


def _has_checkpoint(run: Path) -> bool:
    return any((run / CHECKPOINT_DIR / name).is_file() for name in (LAST, PREVIOUS))


def latest_resumable_run(output_dir: str, experiment: str) -> Path:
    """The newest run of ``experiment`` with a checkpoint or a finished status."""
    for run in reversed(run_folders(output_dir, experiment)):
        status = read_status(run)
        if _has_checkpoint(run) or (status and status["status"] == FINISHED):
            return run
    raise ResumeError(f"resume=last: no run of experiment '{experiment}' under "
                      f"{Path(output_dir) / experiment} has a checkpoint to resume from")


def _resolve_target(cfg, plain: dict) -> tuple[Optional[Path], Optional[Path], Optional[Path]]:
    """``(run_dir, explicit checkpoint, fixed new folder)`` named by ``cfg.resume`` (or SLURM)."""
    target = cfg.resume
    slurm_dir = slurm_run_dir(cfg.output_dir, cfg.experiment, comparable(plain))
    if not target:
        if slurm_dir is not None and (slurm_dir / "config.yaml").is_file():
            log.info("SLURM job resumes its run folder %s", slurm_dir)
            return slurm_dir, None, None
        return None, None, slurm_dir
    if target == "last":
        return latest_resumable_run(cfg.output_dir, cfg.experiment), None, None
    path = Path(target).expanduser()
    if path.is_dir():
        if not (path / "config.yaml").is_file():
            raise ResumeError(f"resume={target}: {path} is not a run folder (no config.yaml)")
        return path, None, None
    verify_checkpoint(path)
    return run_dir_of_checkpoint(path), path, None


def plan_run(cfg, plain: dict) -> RunPlan:
    """What to do for ``cfg`` (``plain``: its resolved plain-dict form)."""
    if is_launch_child():
        import os

        ckpt = os.environ.get(RESUME_CKPT_ENV)
        return RunPlan(Path(os.environ[RUN_DIR_ENV]), Path(ckpt) if ckpt else None)
    run_dir, checkpoint, new_dir = _resolve_target(cfg, plain)
    if run_dir is None:
        return RunPlan(checkpoint=checkpoint, new_dir=new_dir)

    changes = config_changes(_stored_config(run_dir), plain)
    refused = {k: v for k, v in changes.items() if not _matches(k, cfg.resume_allow)}
    if refused:
        keys = ",".join(refused)
        raise ResumeError(
            f"{run_dir} was run with another config; {len(refused)} key(s) differ (stored -> new):\n"
            f"{_format_changes(refused)}\n"
            f"Resume with the stored config ({run_dir / 'config.yaml'}), start a new run (drop resume=), "
            f"or accept the change with resume_allow=[{keys}]")

    status = read_status(run_dir)
    if status and status["status"] == RUNNING and status.get("attempts"):
        last = status["attempts"][-1]
        if process_alive(last):
            raise ResumeError(f"{run_dir} is in progress (pid {last['pid']} on {last['host']}, "
                              f"started {last['started']}); wait for it or stop it first")
    if status and status["status"] == FINISHED:
        extended = {k: v for k, v in changes.items() if k in SCHEDULE_KEYS and _longer(*v)}
        if not extended:
            return RunPlan(run_dir, finished=True, changes=changes)

    if checkpoint is None:
        checkpoint = newest_intact_checkpoint(run_dir)
        if checkpoint is None and not cfg.resume:
            # A SLURM job's own folder without a checkpoint yet (the job was requeued before its
            # first one, or another task of this job just created it): start in it.
            return RunPlan(new_dir=run_dir)
        if checkpoint is None:
            state = status["status"] if status else "unknown"
            raise ResumeError(f"{run_dir} (status {state}) has no intact checkpoint to resume from "
                              f"(looked for {CHECKPOINT_DIR}/{LAST} and {CHECKPOINT_DIR}/{PREVIOUS})")
    return RunPlan(run_dir, checkpoint, changes=changes)


def _longer(old, new) -> bool:
    """Whether a max_epochs / max_steps change lengthens the schedule (-1 = unlimited steps)."""
    if old is None or new is None:
        return False
    if new == -1:
        return old != -1
    return old != -1 and new > old
