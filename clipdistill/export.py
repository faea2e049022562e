"""Export what a run learned: ``clipdistill export``.

    clipdistill export --ckpt runs/<experiment>/<run>/checkpoints/last.ckpt
    clipdistill export --ckpt runs/<experiment>/<run>/checkpoints/last.ckpt --out my_prompts
    clipdistill export --ckpt runs/<experiment>/<run>/checkpoints/last.ckpt --classes classes.txt --out clf
    clipdistill export --export runs/<experiment>/<run>/exports/final --classes classes.txt --out clf
    clipdistill export --ckpt runs/<experiment>/<run>/checkpoints/last.ckpt --merged --out merged_model

Without ``--classes``: a portable export (``export.json`` + ``weights.safetensors``, default
``<run>/exports/<checkpoint name>``), read back by ``clipdistill eval --export``.

With ``--classes FILE`` (one class name per line, or an image_folder ``classnames.txt``): the
text classifier of a text-only prompt learner (CoOp) for those classes, baked into
``classifier.safetensors`` + ``classifier.json``: usable with plain open_clip, no dataset and
no clipdistill needed (the README shows the few lines). Only the student's weights are loaded.

With ``--merged`` (CLIP-LoRA): the low-rank changes added to a copy of the student, written
as an open_clip ``local-dir:`` bundle (``open_clip_config.json`` + ``open_clip_model.safetensors``):
``open_clip.create_model_and_transforms("local-dir:merged_model")`` is the adapted model.

Exit status: 0 written, 2 a mistake in the arguments or files (the message says which; nothing
is overwritten), 1 an unexpected error.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from clipcore.cli import add_config_arguments, prepare_environment, run_guarded


def parse(argv: list[str], prog: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", type=Path, help="a checkpoint written by training")
    source.add_argument("--export", type=Path, help="an existing export folder (with --classes)")
    parser.add_argument("--classes", type=Path, help="bake the text classifier for the classes of this file")
    parser.add_argument("--merged", action="store_true", help="write the student with the learned weight changes "
                        "merged in, as an open_clip local-dir bundle (CLIP-LoRA)")
    parser.add_argument("--out", type=Path, help="the folder to write (must not exist)")
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    if args.export and not (args.classes or args.merged):
        parser.error("--export is already an export: pass --classes FILE to bake its text classifier, "
                     "or --merged to merge its weight changes")
    if args.classes and args.merged:
        parser.error("--classes and --merged write different things: choose one")
    if (args.classes or args.merged) and not args.out:
        parser.error("--classes and --merged need --out DIR (the folder to write)")
    return args


def main(argv: list[str] | None = None, prog: str = "clipdistill export") -> int:
    args = parse(sys.argv[1:] if argv is None else argv, prog)
    return run_guarded(lambda: _run(args), debug=args.debug)


def _run(args) -> int:
    prepare_environment()
    from clipdistill.app import register_config_sections, register_methods

    register_config_sections()
    register_methods()
    if args.classes:
        out = bake(args)
        print(f"classifier written to {out}")
        return 0
    if args.merged:
        out = merge(args)
        print(f"merged open_clip bundle written to {out} (load it as local-dir:{out})")
        return 0
    from clipcore import runner
    from clipcore.rundir import run_dir_of_checkpoint

    _, module, _ = runner.module_from_checkpoint(args.ckpt, args.config, args.overrides)
    run_dir = run_dir_of_checkpoint(args.ckpt) or args.ckpt.parent
    out = args.out or run_dir / "exports" / args.ckpt.stem
    print(f"export written to {runner.export_module(module, out)}")
    return 0


def _stored_run(args):
    """(config, trained tensors, backbone fingerprints) of ``--ckpt`` or ``--export``."""
    from clipcore.checkpoint_file import load_checkpoint
    from clipcore.config import from_plain, load_config
    from clipcore.export import read_export
    from clipcore.module import FINGERPRINT_KEY

    if args.ckpt:
        ckpt = load_checkpoint(args.ckpt)
        stored, tensors = ckpt["hyper_parameters"]["config"], ckpt["state_dict"]
        fingerprints = ckpt.get(FINGERPRINT_KEY, {})
    else:
        tensors, metadata = read_export(args.export)
        stored, fingerprints = metadata["config"], metadata.get("backbone_fingerprints", {})
    cfg = load_config(args.config, args.overrides, base=from_plain(stored))
    return cfg, tensors, fingerprints


def _learned(cfg, tensors) -> dict:
    from clipcore.config import ConfigError
    from kdpl.config import declared_learners

    if cfg.method not in declared_learners():
        raise ConfigError(f"method {cfg.method!r} is not a prompt learner: only prompt learners have a text "
                          f"classifier to bake or weight changes to merge (GCD exports assign clusters with "
                          f"`clipdistill assign`)")
    prefix = "learner."
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _refuse_existing(out: Path) -> None:
    from clipcore.export import ExportError

    if out.exists():
        raise ExportError(f"--out {out} already exists; choose another path (nothing was written)")


def bake(args) -> Path:
    """The baked classifier of ``--ckpt`` or ``--export`` for ``--classes`` (no dataset read)."""
    from kdpl.classifier import bake_classifier, read_class_list, write_classifier

    _refuse_existing(args.out)
    classnames = read_class_list(args.classes)
    cfg, tensors, fingerprints = _stored_run(args)
    classifier, metadata = bake_classifier(cfg, _learned(cfg, tensors), fingerprints, classnames)
    metadata["source"] = str(args.ckpt or args.export)
    return write_classifier(args.out, classifier, metadata)


def merge(args) -> Path:
    """The student with the learner's weight changes merged in, as a local-dir bundle."""
    from kdpl.merged import merged_bundle

    _refuse_existing(args.out)
    cfg, tensors, fingerprints = _stored_run(args)
    return merged_bundle(cfg, _learned(cfg, tensors), fingerprints, args.out)
