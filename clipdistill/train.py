"""Train any registered method: ``clipdistill train`` / ``train.py``.

    clipdistill train -c experiment/b2n_coop_kdpl_vit_b32_pets.yaml data.root=/data/coop
    clipdistill train -c experiment/b2n_coop_kdpl_vit_b32_pets.yaml data.root=/data/coop resume=last
    clipdistill train -c ... resume=last trainer.max_epochs=80 resume_allow=[trainer.max_epochs]
    clipdistill train -c method/coop.yaml -c objective/kdpl.yaml -c trainer/cpu.yaml \
        data.name=image_folder data.root=~/my_photos
    clipdistill train -c experiment/simgcd_aircraft.yaml data.root=/data/aircraft

``-c`` takes a file or a shipped config (``clipdistill list configs``); ``key=value`` overrides
follow (``clipdistill list methods`` shows the methods and the keys each reads).
A run lives in ``<output_dir>/<experiment>/<time>/`` (config.yaml, status.json, checkpoints/,
metrics/, eval/, exports/, train.log). ``last.ckpt`` is written at the end of every epoch (and
every ``checkpoint.every_n_steps`` steps when set); SIGTERM, SIGINT or SIGUSR1 save it and stop.

Exit status: 0 finished (or already finished), 2 a mistake in the config, data, backbone or
checkpoint (the message says which), 128 + signal number when pre-empted (143 for SIGTERM),
1 an unexpected error (a bug: please report it with the traceback).
"""
from __future__ import annotations

import argparse
import sys

from clipcore.cli import add_config_arguments, prepare_environment, run_guarded


def main(argv: list[str] | None = None, prog: str = "train.py") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    return run_guarded(lambda: _train(args), debug=args.debug)


def _train(args) -> int:
    prepare_environment()
    from clipdistill.app import load_run_config, register_methods

    cfg = load_run_config(args.config, args.overrides)
    from clipcore.config import to_plain
    from clipcore.resume import plan_run
    from clipcore.wandb_mode import resolve_wandb_mode

    resolve_wandb_mode(cfg.logger.wandb.mode)  # W&B online without an API key: said before torch loads
    plan = plan_run(cfg, to_plain(cfg))  # a refused resume is reported before the heavy imports
    if plan.finished:
        print(f"{plan.run_dir} has already finished (status.json); nothing to train. To train "
              f"longer, raise trainer.max_epochs and add resume_allow=[trainer.max_epochs].")
        return 0
    register_methods()
    from clipcore.runner import train

    run_dir = train(cfg, plan)
    print(f"run directory: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
