"""Anticipated user errors: one short message, exit status 2, no traceback.

Every error a user causes and can fix (a config key, a data folder, a backbone name, a
checkpoint or export file, a resume that does not match, a non-finite loss) derives from
:class:`UserError`. The command-line entry points catch it, print ``error: <message>`` to stderr
(the run's ``train.log`` gets the same line when a run folder exists) and exit with status 2;
``--debug`` or ``CLIPDISTILL_DEBUG=1`` shows the traceback. Anything else is a bug and keeps its
traceback (exit status 1).

This module imports nothing heavy: the entry points use it before torch is loaded.
"""
from __future__ import annotations

import os
import re

DEBUG_ENV = "CLIPDISTILL_DEBUG"
USER_ERROR_EXIT = 2


class UserError(Exception):
    """Bad input the user can fix; the message names the file, key or value and what was expected."""


class ConfigError(UserError, ValueError):
    """A configuration file or override is invalid; the message names the key and the source."""


class CheckpointError(UserError):
    """A file given as a checkpoint is missing, truncated, or not a checkpoint of this project."""


class NonFiniteLossError(UserError, FloatingPointError):
    """The training loss became NaN or infinite; the message names the epoch and step."""


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


# torch re-raises an error of a DataLoader worker as the same type with the worker's traceback
# in the message: "Caught DataError in DataLoader worker process 0.\nOriginal Traceback ...".
_WORKER_PREFIX = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.")


def user_message(exc: BaseException) -> str:
    """The user-facing message of ``exc``: its text, without a DataLoader worker's traceback."""
    text = str(exc)
    if _WORKER_PREFIX.match(text):
        # The worker's own message is the last line, after "<module>.<Type>: ".
        lines = [line for line in text.splitlines() if line.strip()]
        last = lines[-1] if lines else text
        name = type(exc).__name__
        marker = f"{name}: "
        text = last.split(marker, 1)[1] if marker in last else last
    return text


def is_user_error(exc: BaseException) -> bool:
    return isinstance(exc, UserError)


def list_difference(expected: list, actual: list, limit: int = 8) -> str:
    """Where two name lists differ: missing and extra names, and the first differing index
    (lists with the same names in another order differ only there)."""
    missing = [x for x in expected if x not in set(actual)]
    extra = [x for x in actual if x not in set(expected)]
    parts = [f"{len(expected)} expected vs {len(actual)} given"]
    if missing:
        parts.append(f"missing {missing[:limit]}{' ...' if len(missing) > limit else ''}")
    if extra:
        parts.append(f"extra {extra[:limit]}{' ...' if len(extra) > limit else ''}")
    first = next((i for i, (a, b) in enumerate(zip(expected, actual)) if a != b), None)
    if first is None and len(expected) != len(actual):
        first = min(len(expected), len(actual))
    if first is not None:
        a = expected[first] if first < len(expected) else "<end>"
        b = actual[first] if first < len(actual) else "<end>"
        parts.append(f"first difference at index {first}: {a!r} vs {b!r}")
    return "; ".join(parts)
