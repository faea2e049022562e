"""``status.json``: the state of a run folder and the history of its attempts.

    {"status": "running" | "finished" | "failed" | "preempted",
     "experiment": "...", "method": "...", "created": "2026-12-02T10:00:00",
     "updated": "...", "epoch": 3, "step": 120, "checkpoint": "checkpoints/last.ckpt",
     "attempts": [{"attempt": 0, "status": "preempted", "started": "...", "ended": "...",
                   "exit_reason": "SIGTERM", "exit_code": 143, "resumed_from": null,
                   "start_step": 0, "step": 120, "epoch": 3, "host": "...", "pid": 1234,
                   "slurm_job_id": null}, ...]}

Only the launching rank writes it, atomically. ``epoch`` / ``step`` / ``checkpoint`` are updated
whenever a checkpoint is written. An attempt killed without a chance to record its end (SIGKILL,
out-of-memory, power loss) stays ``running``; the next resume records it as ``failed`` with
``exit_reason`` "ended without recording its exit", unless its process is still alive on this
host, in which case the resume is refused. Light: no torch.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Optional

from clipcore.errors import UserError
from clipcore.io import atomic_write_text
from clipcore.signals import slurm_job_id

STATUS_FILE = "status.json"
RUNNING, FINISHED, FAILED, PREEMPTED = "running", "finished", "failed", "preempted"
STATES = (RUNNING, FINISHED, FAILED, PREEMPTED)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def read_status(run_dir: Path) -> Optional[dict]:
    path = Path(run_dir) / STATUS_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); it records the run's attempts: "
                        f"restore it or remove the run folder") from exc
    if not isinstance(data, dict) or data.get("status") not in STATES:
        raise UserError(f"{path}: expected a run status with 'status' one of {', '.join(STATES)}")
    return data


def write_status(run_dir: Path, data: dict) -> None:
    data["updated"] = now()
    atomic_write_text(Path(run_dir) / STATUS_FILE, json.dumps(data, indent=2) + "\n")


def process_alive(attempt: dict) -> bool:
    """Whether the process of a ``running`` attempt still runs (same host, live pid, not us)."""
    pid = attempt.get("pid")
    if attempt.get("host") != socket.gethostname() or not pid or pid == os.getpid():
        return False
    if attempt.get("slurm_job_id") and attempt.get("slurm_job_id") == slurm_job_id():
        return False  # this job was requeued: the earlier process belongs to the previous run of it
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, PermissionError, ValueError):
        return False
    return True


def close_stale_attempt(status: dict) -> None:
    """Record a ``running`` attempt whose process is gone as failed (it never wrote its exit)."""
    attempts = status.get("attempts") or []
    if status["status"] == RUNNING and attempts and attempts[-1].get("status") == RUNNING:
        last = attempts[-1]
        last.update(status=FAILED, ended=status.get("updated"),
                    exit_reason="ended without recording its exit (SIGKILL, out of memory or a lost node)")
        status["status"] = FAILED


def begin_attempt(run_dir: Path, cfg, resumed_from: Optional[Path]) -> int:
    """Append a ``running`` attempt and return its number (0 for a new run)."""
    status = read_status(run_dir) or {"status": RUNNING, "experiment": cfg.experiment,
                                       "method": cfg.method, "created": now(), "attempts": [],
                                       "epoch": 0, "step": 0, "checkpoint": None}
    close_stale_attempt(status)
    number = len(status["attempts"])
    status["attempts"].append({
        "attempt": number, "status": RUNNING, "started": now(), "ended": None,
        "exit_reason": None, "exit_code": None,
        "resumed_from": str(resumed_from) if resumed_from else None,
        "start_step": status.get("step", 0), "step": status.get("step", 0),
        "epoch": status.get("epoch", 0), "host": socket.gethostname(), "pid": os.getpid(),
        "slurm_job_id": slurm_job_id(),
    })
    status["status"] = RUNNING
    write_status(run_dir, status)
    return number


def record_checkpoint(run_dir: Path, epoch: int, step: int, checkpoint: Path) -> None:
    status = read_status(run_dir)
    if status is None:
        return
    relative = os.path.relpath(checkpoint, run_dir)
    status.update(epoch=epoch, step=step, checkpoint=relative)
    if status["attempts"]:
        status["attempts"][-1].update(epoch=epoch, step=step)
    write_status(run_dir, status)


def end_attempt(run_dir: Path, state: str, reason: Optional[str] = None,
                exit_code: Optional[int] = None) -> None:
    status = read_status(run_dir)
    if status is None:
        return
    status["status"] = state
    if status["attempts"]:
        status["attempts"][-1].update(status=state, ended=now(), exit_reason=reason, exit_code=exit_code)
    write_status(run_dir, status)
