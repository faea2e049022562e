"""Where the project keeps what it computes or downloads once (light: no torch).

    <cache root>/text_features/      teacher and concept text features
    <cache root>/representations/... GCD teacher representations
    <cache root>/assets/             published dictionaries and split files
    <cache root>/synthetic/          the offline demo's world and small CLIPs

The cache root is ``$CLIPCORE_CACHE_DIR``, else ``$XDG_CACHE_HOME/clipcore``, else
``~/.cache/clipcore``.
"""
from __future__ import annotations

import os
from pathlib import Path

CACHE_DIR_ENV = "CLIPCORE_CACHE_DIR"
# open_clip's model-name prefix for a model folder on disk (open_clip_config.json + weights).
LOCAL_DIR = "local-dir:"


def cache_root() -> Path:
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "clipcore"
