"""Which W&B mode a run logs in: ``logger.wandb.mode`` against ``WANDB_MODE`` and the API key.

Light on purpose (no torch, no Lightning): ``train.py`` checks it with the config, before the
heavy imports, so "online without a key" is said at once.
"""
from __future__ import annotations

import netrc
import os
from urllib.parse import urlparse

from clipcore.errors import ConfigError

WANDB_MODES = ("auto", "online", "offline", "disabled")


def _wandb_key_configured() -> bool:
    """An API key in the environment, or in ~/.netrc for the W&B server (`wandb login` writes it
    there; a self-hosted server is named by WANDB_BASE_URL)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_wandb_mode(mode: str) -> str:
    """``auto`` becomes online with an API key, offline without; ``WANDB_MODE`` in the env wins."""
    if mode not in WANDB_MODES:
        raise ConfigError(f"logger.wandb.mode={mode!r}: expected one of {', '.join(WANDB_MODES)}")
    env = os.environ.get("WANDB_MODE")
    if env in ("disabled", "offline"):
        return env
    if env == "dryrun":
        return "offline"
    wanted = "online" if env == "online" else mode
    if wanted == "auto":
        return "online" if _wandb_key_configured() else "offline"
    if wanted == "online" and not _wandb_key_configured():
        # wandb itself would stop the run with a traceback, once the models are loaded.
        asked = "WANDB_MODE=online" if env == "online" else "logger.wandb.mode=online"
        raise ConfigError(f"{asked}, but no W&B API key is configured: run `wandb login` (or set "
                          f"WANDB_API_KEY), or log offline with logger.wandb.mode=offline and upload "
                          f"later with `wandb sync`")
    return wanted
