"""Shared command-line plumbing for train.py / eval.py."""
from __future__ import annotations

import argparse
import importlib
import logging
import os


def prepare_environment() -> None:
    """Set up logging, and make huggingface_hub fail fast when the machine is offline.

    ``HF_HUB_OFFLINE`` must be set before open_clip is imported (ecosystem spec, trap 3); the
    user may set ``CLIPCORE_OFFLINE=1`` to get it without remembering the hub's variable.
    """
    if os.environ.get("CLIPCORE_OFFLINE") == "1":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # Lightning prints through its own handler; stop a second copy through the root logger.
    logging.getLogger("lightning.pytorch").propagate = False


def register_methods() -> None:
    """Importing the method packages registers their methods, datasets and config sections."""
    for package in ("clipcore.zeroshot", "clipcore.synthetic.dataset", "kdpl", "gcd"):
        importlib.import_module(package)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", action="append", default=[], metavar="YAML",
                        help="config file; repeat to merge several in order")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. trainer.max_epochs=5 data.root=/data")


def config_from_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace):
    """Prepare the environment, register the methods and load ``-c`` files + overrides; a bad
    config ends the program with status 2 and the message naming the key and source."""
    prepare_environment()
    register_methods()
    from clipcore.config import ConfigError, load_config

    try:
        return load_config(args.config, args.overrides)
    except ConfigError as exc:
        parser.exit(2, f"error: {exc}\n")
