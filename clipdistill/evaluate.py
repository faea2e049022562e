"""Evaluate a checkpoint, an export, or a zero-shot model: ``clipdistill eval`` / ``eval.py``.

    clipdistill eval --ckpt runs/b2n_coop_kdpl_vit_b32_pets/<run>/checkpoints/last.ckpt data.subsample_classes=new
    clipdistill eval --export runs/<experiment>/<run>/exports/final -c data/dtd.yaml data.root=/data/coop
    clipdistill eval -c data/oxford_pets.yaml -c backbone/vit_b32.yaml method=zeroshot data.root=/data/coop
    clipdistill eval method=zeroshot data.name=image_folder data.root=~/my_photos zeroshot.templates=imagenet80
    clipdistill eval method=zeroshot -c data/dtd.yaml data.root=/data/coop \
        'zeroshot.templates=["a photo of a {} texture.","a close-up of {c}."]'

``-c`` takes a file or a shipped config (``clipdistill list configs``). Writes ``metrics.json``,
``metrics.md`` (test/acc, test/acc_top5, test/mean_class_acc) and ``predictions.csv`` (one row
per test image: path, label, prediction, top5, score) to ``--out`` (default: the run's ``eval/``).
``python eval.py export ...`` is ``clipdistill export ...``.

Exit status: 0 done, 2 a mistake in the arguments, config, data or files (the message says
which), 1 an unexpected error.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from clipcore.cli import add_config_arguments, prepare_environment, run_guarded
from clipcore.errors import UserError


def parse(argv: list[str], prog: str = "eval.py") -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--ckpt", type=Path, help="a checkpoint written by training")
    source.add_argument("--export", type=Path, help="an export folder (export.json + weights.safetensors)")
    parser.add_argument("--ensemble", type=Path, action="append", default=[], metavar="CKPT",
                        help="another checkpoint of a prompt learner on the same student, repeatable: the logits "
                             "of --ckpt's and of these are averaged (UPL's prompt-representation ensemble)")
    parser.add_argument("--out", type=Path, help="folder for metrics.json / metrics.md / predictions.csv")
    add_config_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, prog: str = "eval.py") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["export"]:  # `eval.py export ...`, kept from earlier versions
        from clipdistill.export import main as export_main

        return export_main(argv[1:], prog=f"{prog} export")
    if argv[:1] == ["evaluate"]:
        argv = argv[1:]
    args = parse(argv, prog)
    return run_guarded(lambda: _run(args), debug=args.debug)


def _run(args) -> int:
    prepare_environment()
    from clipdistill.app import load_run_config, register_config_sections, register_methods

    register_config_sections()
    if args.ensemble and not args.ckpt:
        raise UserError("--ensemble adds checkpoints to --ckpt's model: give --ckpt too")
    if not args.ckpt and not args.export:
        load_run_config(args.config, args.overrides)  # a typo is reported before the heavy imports
    register_methods()
    from clipcore import runner
    from clipcore.registry import build_method
    from clipcore.rundir import run_dir_of_checkpoint

    if args.ckpt:
        cfg, module, datamodule = runner.module_from_checkpoint(args.ckpt, args.config, args.overrides)
        run_dir = run_dir_of_checkpoint(args.ckpt) or args.ckpt.parent
        default_out = run_dir / "eval" / f"{args.ckpt.stem}-{evaluation_name(cfg)}"
        for other in args.ensemble:
            module.add_ensemble_member(runner.module_from_checkpoint(other, args.config, args.overrides)[1], other)
        if args.ensemble:
            default_out = default_out.with_name(f"{default_out.name}-ensemble{1 + len(args.ensemble)}")
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
