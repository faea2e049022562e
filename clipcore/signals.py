"""Pre-emption: SIGTERM, SIGINT and SIGUSR1 stop a run at the next step boundary, with a checkpoint.

A handler only records the signal. The checkpoint callback (``clipcore.checkpointing``) sees
the request after the current optimiser step (all ranks agree on it under DDP), writes
``last.ckpt``, and raises :class:`RunPreempted`; the runner records the attempt as
``preempted`` and the process exits with status ``128 + signal number`` (SIGINT 130, SIGUSR1 138,
SIGTERM 143), so a scheduler never mistakes a pre-empted job for a finished one. Under SLURM,
SIGUSR1 (``#SBATCH --signal=USR1@90``) also requeues the job, which then resumes the same run
folder. A second Ctrl+C stops at once. Light: no torch.
"""
from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import threading
from typing import Callable, Optional

log = logging.getLogger(__name__)

STOP_SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGINT", None),
                                 getattr(signal, "SIGUSR1", None)) if s is not None)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class RunPreempted(Exception):
    """Training stopped on a signal after saving a checkpoint; ``exit_code`` is 128 + signum."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + int(signum)


class StopRequest:
    """Records the first stop signal; ``forward(signum)`` passes it on (e.g. to DDP children)."""

    def __init__(self):
        self.signum: Optional[int] = None
        self.forward: Optional[Callable[[int], None]] = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            if signum == getattr(signal, "SIGINT", None):
                raise KeyboardInterrupt  # a second Ctrl+C: the user does not want to wait
            return
        self.signum = signum
        if self.forward is not None and signum != getattr(signal, "SIGINT", None):
            # Ctrl+C already reaches the whole process group; other signals may be sent to us only.
            self.forward(signum)

    def install(self) -> "StopRequest":
        """(Re)install the handlers; callable again to take them back from a library that
        installed its own (Lightning does, at the start of fit)."""
        if threading.current_thread() is not threading.main_thread():
            return self
        for signum in STOP_SIGNALS:
            previous = signal.signal(signum, self._handle)
            self._previous.setdefault(signum, previous)
        return self

    def restore(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def __enter__(self) -> "StopRequest":
        return self.install()

    def __exit__(self, *exc) -> None:
        self.restore()


def slurm_job_id() -> Optional[str]:
    """``<array job>_<task>`` for an array task, else ``SLURM_JOB_ID`` (None outside SLURM)."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job is not None:
        return f"{array_job}_{os.environ.get('SLURM_ARRAY_TASK_ID', '0')}"
    return os.environ.get("SLURM_JOB_ID")


def requeue_slurm_job() -> bool:
    """``scontrol requeue <job>``: the job goes back to the queue and, when it starts again,
    resumes its run folder (``clipcore.rundir``). Returns whether SLURM accepted."""
    job = slurm_job_id()
    if job is None or not re.fullmatch(r"[0-9_]+", job):
        return False
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("could not requeue SLURM job %s: %s", job, exc)
        return False
    if result.returncode != 0:
        log.warning("scontrol requeue %s failed (%d): %s", job, result.returncode, result.stderr.strip())
        return False
    log.info("requeued SLURM job %s", job)
    return True
