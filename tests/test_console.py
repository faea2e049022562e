"""What reaches the console (stderr) of the entry points: our records, warnings from anyone, and
not open_clip's informational chatter nor records already printed."""
import logging
import os

import open_clip

from clipcore.cli import ConsoleFilter

OPEN_CLIP_FILE = os.path.join(os.path.dirname(open_clip.__file__), "factory.py")


def record(name: str, level: int, pathname: str, msg: str = "message", **extra) -> logging.LogRecord:
    rec = logging.LogRecord(name, level, pathname, 1, msg, None, None)
    rec.__dict__.update(extra)
    return rec


def test_the_console_drops_open_clips_info_and_file_only_records_and_keeps_the_rest():
    keep = ConsoleFilter().filter
    assert not keep(record("root", logging.INFO, OPEN_CLIP_FILE))  # "Parsing tokenizer identifier ..."
    assert keep(record("root", logging.WARNING, OPEN_CLIP_FILE))  # open_clip's warnings still show
    assert keep(record("root", logging.INFO, "/home/me/my_script.py"))  # another library's root INFO
    assert keep(record("clipcore.runner", logging.INFO, "/x/clipcore/runner.py"))
    assert not keep(record("clipcore.runner", logging.ERROR, "/x/clipcore/runner.py", file_only=True))
    rank_zero = "lightning.pytorch.utilities.rank_zero"
    assert not keep(record(rank_zero, logging.INFO, "/x/rank_zero.py", "💡 Tip: For seamless cloud logging ..."))
    assert keep(record(rank_zero, logging.INFO, "/x/rank_zero.py", "GPU available: False, used: False"))
