#!/usr/bin/env python
"""Train any registered method.

    python train.py -c configs/experiment/demo_coop_kdpl.yaml trainer.max_epochs=5
    python train.py -c configs/experiment/demo_coop_kdpl.yaml resume=last
"""
from __future__ import annotations

import argparse
import sys

from clipcore.cli import add_config_arguments, config_from_arguments


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    cfg = config_from_arguments(parser, parser.parse_args(argv))
    from clipcore.runner import train

    run_dir = train(cfg)
    print(f"run directory: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
