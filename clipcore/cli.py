"""Command-line plumbing shared by the entry points: environment, config arguments, errors.

Light on purpose (no torch): a config mistake is reported before the heavy imports.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable

from clipcore.errors import DEBUG_ENV, USER_ERROR_EXIT, UserError, debug_enabled, user_message
from clipcore.signals import RunPreempted


class ConsoleFilter(logging.Filter):
    """What stays out of stderr: records marked ``file_only`` (already printed by the entry
    point); open_clip's messages below a warning (it logs on the root logger: "Parsing tokenizer
    identifier", "Loading pretrained ... weights", three lines per model, while our own loader says
    in one line which model came from where); and Lightning's tip advertising its cloud logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "file_only", False):
            return False
        if record.name.startswith("lightning") and str(record.msg).startswith("💡 Tip"):
            return False  # Lightning's advertisement of its cloud logger, in every run
        return not (record.name == "root" and record.levelno < logging.WARNING
                    and f"{os.sep}open_clip{os.sep}" in record.pathname)


def prepare_environment() -> None:
    """Set up logging, and make huggingface_hub fail fast when the machine is offline.

    ``HF_HUB_OFFLINE`` must be set before open_clip is imported (ecosystem spec, trap 3); the
    user may set ``CLIPCORE_OFFLINE=1`` to get it without remembering the hub's variable.
    """
    if os.environ.get("CLIPCORE_OFFLINE") == "1":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            if not any(isinstance(f, ConsoleFilter) for f in handler.filters):
                handler.addFilter(ConsoleFilter())
    # Lightning's messages reach the console (and a run's train.log) through the root logger;
    # clipcore.runner drops the console handler Lightning gives its own top logger.


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", action="append", default=[], metavar="YAML",
                        help="config file; repeat to merge several in order")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. trainer.max_epochs=5 data.root=/data")
    add_debug_argument(parser)


def add_debug_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help=f"show the traceback of an error (also: {DEBUG_ENV}=1)")


def run_guarded(main: Callable[[], int], debug: bool = False) -> int:
    """Run ``main``; an anticipated error becomes ``error: <message>`` on stderr and exit 2, a
    pre-emption its exit status (128 + signal). ``debug`` shows tracebacks instead."""
    if debug:
        os.environ[DEBUG_ENV] = "1"  # DDP worker processes inherit it
    try:
        return main()
    except RunPreempted as exc:
        return exc.exit_code  # the runner already wrote the line to train.log and stderr
    except UserError as exc:
        if debug_enabled():
            raise
        print(f"error: {user_message(exc)}", file=sys.stderr)
        return USER_ERROR_EXIT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
