"""``clipdistill``: one command for everything the README runs.

    clipdistill train -c method/coop.yaml -c objective/kdpl.yaml -c data/dtd.yaml data.root=/data/coop
    clipdistill eval --ckpt runs/<experiment>/<run>/checkpoints/last.ckpt data.subsample_classes=new
    clipdistill export --ckpt runs/<experiment>/<run>/checkpoints/last.ckpt --classes classes.txt --out clf
    clipdistill protocols b2n --methods zeroshot,coop,coop+kdpl --datasets dtd data.root=/data/coop
    clipdistill filter -c experiment/spectralgcd_cub.yaml data.root=/data/cub
    clipdistill assign --export runs/<experiment>/<run>/exports/final --images photos/ --out clusters.csv
    clipdistill demo [--quick]
    clipdistill assets list | fetch
    clipdistill list methods | datasets | models | templates

``-c`` takes a file path or the name of a shipped config (``trainer/cpu.yaml``, ``method/coop.yaml``;
``clipdistill list configs`` shows them). ``clipdistill <command> --help`` lists a command's
options with examples.
"""
from __future__ import annotations

import importlib
import sys
from typing import Callable, Optional

COMMANDS = {
    "train": "train any method (a run folder with checkpoints, metrics, exports)",
    "eval": "evaluate a checkpoint, an export or a zero-shot model",
    "export": "export a checkpoint (optionally with a baked text classifier for a class list)",
    "protocols": "b2n / xd / dg / gcd protocols: methods x datasets x seeds -> one table",
    "filter": "spectral filtering of a concept dictionary (SpectralGCD step 1)",
    "assign": "assign images to the discovered clusters with a GCD export",
    "demo": "the offline demo: every method on the synthetic world",
    "assets": "list or fetch the published dictionaries and split files",
    "list": "list methods, datasets, models, templates or shipped configs",
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [__doc__.strip(), "", "commands:"] + [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    return "\n".join(lines) + "\n"


# Each command's module, imported only when the command runs (`clipdistill list` loads no torch).
ENTRY_MODULES = {"train": "clipdistill.train", "eval": "clipdistill.evaluate", "export": "clipdistill.export",
                 "protocols": "clipdistill.protocols.__main__", "filter": "gcd.filter", "assign": "gcd.assign",
                 "demo": "clipdistill.demo", "assets": "clipcore.assets", "list": "clipdistill.listing"}


def _runner(command: str) -> Callable[[list[str]], int]:
    entry = importlib.import_module(ENTRY_MODULES[command]).main
    return lambda argv: entry(argv, prog=f"clipdistill {command}")


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(), end="")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; expected one of {', '.join(COMMANDS)}\n", file=sys.stderr)
        print(_usage(), end="", file=sys.stderr)
        return 2
    return _runner(command)(rest)


if __name__ == "__main__":
    sys.exit(main())
