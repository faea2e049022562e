"""Logger construction: a CSV logger always, W&B online / offline / disabled from the config.

``logger.wandb.mode: auto`` (the default) logs online when an API key is configured and offline
otherwise, into ``<run>/wandb/offline-run-*`` (upload later with ``wandb sync``). One W&B run per
run folder: its id is kept in ``<run>/wandb_id.txt`` and every resumed attempt appends to it.
"""
from __future__ import annotations

import logging
import uuid
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, Logger

from clipcore.rundir import launch_rank
from clipcore.wandb_mode import resolve_wandb_mode

log = logging.getLogger(__name__)

WANDB_ID_FILE = "wandb_id.txt"


def wandb_run_id(run_dir: Path, rank_zero: bool = True) -> str:
    """The W&B id of this run folder, created (uuid4 hex) by the first attempt's rank 0."""
    id_file = run_dir / WANDB_ID_FILE
    if id_file.is_file():
        return id_file.read_text().strip()
    run_id = uuid.uuid4().hex
    if rank_zero:
        id_file.write_text(run_id + "\n")
    return run_id


def build_loggers(cfg, run_dir: Path, config_dict: dict, attempt: int = 0) -> list[Logger]:
    loggers: list[Logger] = []
    if cfg.logger.csv:
        # One folder per attempt (0, then 1, 2... for resumes): Lightning's CSV logger would
        # otherwise delete the metrics an interrupted attempt already wrote. Rows are flushed
        # every step, so a killed attempt keeps what it logged.
        loggers.append(CSVLogger(save_dir=str(run_dir), name="metrics", version=str(attempt),
                                 flush_logs_every_n_steps=1))
    mode = resolve_wandb_mode(cfg.logger.wandb.mode)
    if mode != "disabled":
        from lightning.pytorch.loggers import WandbLogger

        wandb_logger = WandbLogger(
            project=cfg.logger.wandb.project,
            entity=cfg.logger.wandb.entity,
            name=f"{cfg.experiment}/{run_dir.name}",
            save_dir=str(run_dir),
            id=wandb_run_id(run_dir, rank_zero=launch_rank() == 0),
            resume="allow",
            mode=mode,
            tags=list(cfg.logger.wandb.tags),
            config=config_dict,
        )
        # Lightning always passes wandb.init(anonymous=None), which wandb >= 0.19 answers with
        # "WARNING The anonymous setting has no effect" in every run: leave the setting unset.
        init_kwargs = getattr(wandb_logger, "_wandb_init", {})
        if "anonymous" in init_kwargs and init_kwargs["anonymous"] is None:
            del init_kwargs["anonymous"]
        loggers.append(wandb_logger)
        if mode == "offline":
            log.info("W&B is offline: upload later with `wandb sync %s/wandb/offline-run-*`", run_dir)
    return loggers


def finish_wandb(exit_code: int) -> None:
    """Close an open W&B run with ``exit_code`` (flushes an offline run to disk)."""
    import sys

    wandb = sys.modules.get("wandb")  # never import it just to find there is nothing to close
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=exit_code)
