"""Logger construction: a CSV logger always, W&B online / offline / disabled from the config."""
from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, Logger

log = logging.getLogger(__name__)

WANDB_MODES = ("auto", "online", "offline", "disabled")


def _wandb_key_configured() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_wandb_mode(mode: str) -> str:
    """``auto`` becomes online with an API key, offline without; ``WANDB_MODE`` in the env wins."""
    if mode not in WANDB_MODES:
        raise ValueError(f"logger.wandb.mode={mode!r}: expected one of {', '.join(WANDB_MODES)}")
    env = os.environ.get("WANDB_MODE")
    if env in ("disabled", "offline", "online"):
        return env
    if env == "dryrun":
        return "offline"
    if mode == "auto":
        return "online" if _wandb_key_configured() else "offline"
    return mode


def build_loggers(cfg, run_dir: Path, config_dict: dict) -> list[Logger]:
    loggers: list[Logger] = []
    if cfg.logger.csv:
        # One folder per attempt (0, then 1, 2... for resumes): Lightning's CSV logger would
        # otherwise delete the metrics an interrupted attempt already wrote.
        attempt = sum(1 for p in (run_dir / "metrics").glob("*/metrics.csv")) if (run_dir / "metrics").is_dir() else 0
        loggers.append(CSVLogger(save_dir=str(run_dir), name="metrics", version=str(attempt)))
    mode = resolve_wandb_mode(cfg.logger.wandb.mode)
    if mode != "disabled":
        from lightning.pytorch.loggers import WandbLogger

        # One W&B run per run directory: a resumed run appends to the same W&B run.
        id_file = run_dir / "wandb_id.txt"
        if id_file.is_file():
            run_id = id_file.read_text().strip()
        else:
            import wandb

            run_id = wandb.util.generate_id()
            id_file.write_text(run_id)
        loggers.append(
            WandbLogger(
                project=cfg.logger.wandb.project,
                entity=cfg.logger.wandb.entity,
                name=f"{cfg.experiment}/{run_dir.name}",
                save_dir=str(run_dir),
                id=run_id,
                resume="allow",
                mode=mode,
                tags=list(cfg.logger.wandb.tags),
                config=config_dict,
            )
        )
        if mode == "offline":
            log.info("W&B is offline: upload later with `wandb sync %s/wandb/offline-run-*`", run_dir)
    return loggers
