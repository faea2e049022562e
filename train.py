#!/usr/bin/env python
"""Train any registered method.

    python train.py -c configs/experiment/demo_coop_kdpl.yaml trainer.max_epochs=5
    python train.py -c configs/experiment/demo_coop_kdpl.yaml resume=last
"""
from __future__ import annotations

import argparse
import sys

from clipcore.cli import add_config_arguments, prepare_environment, register_methods


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    prepare_environment()
    register_methods()
    from clipcore.config import ConfigError, load_config
    from clipcore.runner import train

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        parser.exit(2, f"error: {exc}\n")
    run_dir = train(cfg)
    print(f"run directory: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
