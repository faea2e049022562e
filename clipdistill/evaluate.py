"""Evaluate a checkpoint, an export, or a zero-shot model; export a checkpoint.

    python eval.py --ckpt runs/b2n_coop_kdpl_vit_b32_pets/<run>/checkpoints/last.ckpt data.subsample_classes=new
    python eval.py --export runs/<experiment>/<run>/exports/final -c configs/data/dtd.yaml data.root=/data/coop
    python eval.py -c configs/data/oxford_pets.yaml -c configs/backbone/vit_b32.yaml method=zeroshot \
        data.root=/data/coop
    python eval.py export --ckpt runs/<experiment>/<run>/checkpoints/last.ckpt --out my_prompts

Metrics go to ``<out>/metrics.json`` and ``<out>/metrics.md`` (default: the run's ``eval/``).
Exit status: 0 done, 2 a mistake in the arguments, config, data or files (the message says
which), 1 an unexpected error.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from clipcore.cli import add_config_arguments, prepare_environment, run_guarded


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="eval.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    ev = sub.add_parser("evaluate", help="evaluate (the default command)")
    source = ev.add_mutually_exclusive_group()
    source.add_argument("--ckpt", type=Path, help="a checkpoint written by train.py")
    source.add_argument("--export", type=Path, help="an export folder (export.json + weights.safetensors)")
    ev.add_argument("--out", type=Path, help="folder for metrics.json / metrics.md")
    add_config_arguments(ev)
    ex = sub.add_parser("export", help="write a portable export of a checkpoint")
    ex.add_argument("--ckpt", type=Path, required=True)
    ex.add_argument("--out", type=Path, help="export folder (default: <run>/exports/<ckpt name>)")
    add_config_arguments(ex)
    if not argv or argv[0] not in ("evaluate", "export", "-h", "--help"):
        argv = ["evaluate", *argv]
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    return run_guarded(lambda: _run(args), debug=args.debug)


def _run(args) -> int:
    prepare_environment()
    from clipdistill.app import load_run_config, register_config_sections, register_methods

    register_config_sections()
    if args.command == "evaluate" and not args.ckpt and not args.export:
        load_run_config(args.config, args.overrides)  # a typo is reported before the heavy imports
    register_methods()
    from clipcore import runner
    from clipcore.registry import build_method
    from clipcore.rundir import run_dir_of_checkpoint

    if args.command == "export":
        _, module, _ = runner.module_from_checkpoint(args.ckpt, args.config, args.overrides)
        run_dir = run_dir_of_checkpoint(args.ckpt) or args.ckpt.parent
        out = args.out or run_dir / "exports" / args.ckpt.stem
        print(f"export written to {runner.export_module(module, out)}")
        return 0
    if args.ckpt:
        cfg, module, datamodule = runner.module_from_checkpoint(args.ckpt, args.config, args.overrides)
        run_dir = run_dir_of_checkpoint(args.ckpt) or args.ckpt.parent
        default_out = run_dir / "eval" / f"{args.ckpt.stem}-{evaluation_name(cfg)}"
    elif args.export:
        cfg, module, datamodule = runner.module_from_export(args.export, args.config, args.overrides)
        default_out = args.export / "eval" / evaluation_name(cfg)
    else:
        cfg = load_run_config(args.config, args.overrides)
        module, datamodule = build_method(cfg)
        default_out = Path(cfg.output_dir) / cfg.experiment / "eval" / evaluation_name(cfg)
    out = args.out or default_out
    metrics = runner.evaluate(cfg, module, datamodule, out)
    print((out / "metrics.md").read_text() if (out / "metrics.md").exists() else metrics)
    return 0


def evaluation_name(cfg) -> str:
    """``<dataset>`` (+ ``-<class subset>`` for the classification methods)."""
    subset = cfg.data.get("subsample_classes")
    return f"{cfg.data.name}-{subset}" if subset else str(cfg.data.name)


if __name__ == "__main__":
    sys.exit(main())
