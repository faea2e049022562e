"""Spectral concept filtering command (spectralgcd spec §1).

    clipdistill filter -c experiment/spectralgcd_cub.yaml data.root=/data/cub [key=value ...] [--out DIR]
    clipdistill filter -c experiment/spectralgcd_cub.yaml data.root=/data/cub \
        teacher.name=ViT-SO400M-14-SigLIP teacher.pretrained=webli teacher.preprocess=model
    python -m gcd.filter ...  (the same command)

The teacher (``teacher.*``) scores every train image of ``data.name`` (test transform) against
the dictionary (``gcd.dictionary``, de-duplicated, with the known class names appended);
the logits cos/τ are streamed batch by batch into a ``SpectralAccumulator`` (the N×K matrix is
never held more than once), and the kept concepts are written, most important first, to
``gcd.concepts_csv`` when it is set (where training reads them), else to
``<output_dir>/<experiment>/concepts/<dataset>_concepts.csv``; ``--out DIR`` writes
``DIR/<dataset>_concepts.csv``. Beside it: ``spectrum.png`` and ``filter.json`` (k_e, n_keep,
N, K, timings). Teacher text features come from the shared text-feature cache.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

FILTER_SUMMARY = "filter.json"


def output_csv(cfg, out_dir: str | Path | None) -> Path:
    name = f"{cfg.data.name}_concepts.csv"
    if out_dir is not None:
        return Path(out_dir) / name
    if cfg.gcd.concepts_csv:
        return Path(cfg.gcd.concepts_csv)
    return Path(cfg.output_dir) / cfg.experiment / "concepts" / name


def run_filter(cfg, out_dir: str | Path | None = None) -> Path:
    """Filter ``gcd.dictionary`` on ``data.name`` with ``teacher``; returns the CSV path."""
    from clipcore.assets import merge_concepts, sha256_of
    from clipcore.build import encoder_from_config
    from clipcore.io import atomic_write_text
    from gcd.config import concept_prompts, prompt_template
    from gcd.data import GCDDataModule
    from gcd.methods import device_for_teacher, read_concepts, teacher_normalization
    from gcd.spectral import SpectralAccumulator, plot_spectrum, write_concepts_csv
    from gcd.teacher_cache import image_concept_logits, teacher_text_features

    started = time.perf_counter()
    csv_path = output_csv(cfg, out_dir)
    device = device_for_teacher(cfg)
    # Dataset and dictionary first: a missing folder or CSV fails before the teacher loads.
    splits = GCDDataModule.from_name(
        cfg.data.name, cfg.data.root, prop_train_labels=cfg.data.prop_train_labels, seed=cfg.seed,
        split_follows_seed=cfg.data.split_follows_seed).splits
    concepts = merge_concepts(read_concepts(cfg.gcd.dictionary, "gcd.dictionary"), splits.old_classnames)
    teacher = encoder_from_config(cfg.teacher).freeze().eval()
    datamodule = GCDDataModule(splits, image_size=teacher.image_size, eval_batch_size=cfg.data.eval_batch_size,
                               num_workers=cfg.data.num_workers, **teacher_normalization(cfg, teacher),
                               pin_memory=device.type == "cuda", skip_corrupt=cfg.data.skip_corrupt,
                               max_corrupt_fraction=cfg.data.max_corrupt_fraction)
    datamodule.setup("fit")
    prompts = concept_prompts(prompt_template(cfg.gcd, cfg.data.name), concepts)
    teacher.to(device)
    t0 = time.perf_counter()
    cache_dir = cfg.gcd.teacher_cache_dir
    text = teacher_text_features(teacher, prompts, cache_dir, device)
    t_text = time.perf_counter() - t0

    n_images = len(splits.train)
    acc = SpectralAccumulator(len(concepts), method="auto", max_rows=n_images, device=device)
    t0 = time.perf_counter()
    for batch in datamodule.train_eval_dataloader():
        batch = datamodule.on_before_batch_transfer(batch, 0)  # drops (and counts) skipped images
        if batch is not None:
            acc.update(image_concept_logits(teacher, batch["image"], text, cfg.gcd.tau))
    t_images = time.perf_counter() - t0
    del teacher, text
    t0 = time.perf_counter()
    details = acc.finalize(cfg.gcd.beta_e, cfg.gcd.beta_c)
    t_spectral = time.perf_counter() - t0

    write_concepts_csv(csv_path, concepts, details.order, details.n_keep)
    plot_spectrum(details, csv_path.parent / "spectrum.png")
    summary = {
        "dataset": cfg.data.name, "dictionary": cfg.gcd.dictionary, "teacher": cfg.teacher.name,
        "template": prompt_template(cfg.gcd, cfg.data.name), "tau": cfg.gcd.tau,
        "beta_e": cfg.gcd.beta_e, "beta_c": cfg.gcd.beta_c, "N": n_images, "K": len(concepts),
        "k_e": details.k_e, "n_keep": details.n_keep, "method": details.method,
        "concepts_csv": str(csv_path),
        # Training warns when the CSV beside this file no longer has these bytes.
        "concepts_sha256": sha256_of(csv_path),
        "seconds": {"text": round(t_text, 3), "images": round(t_images, 3),
                    "spectral": round(t_spectral, 3), "total": round(time.perf_counter() - started, 3)},
    }
    atomic_write_text(csv_path.parent / FILTER_SUMMARY, json.dumps(summary, indent=2))
    log.info("kept %d of %d concepts (k_e=%d) -> %s", details.n_keep, len(concepts), details.k_e, csv_path)
    return csv_path


def main(argv: list[str] | None = None, prog: str = "python -m gcd.filter") -> int:
    from clipcore.cli import add_config_arguments, run_guarded

    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--out", type=Path, help="folder for <dataset>_concepts.csv, spectrum.png, filter.json")
    args = parser.parse_args(argv)
    return run_guarded(lambda: _filter(args), debug=args.debug)


def _filter(args) -> int:
    from clipcore.cli import prepare_environment
    from clipcore.config import load_config

    prepare_environment()
    import gcd.config  # noqa: F401  (registers the GCD methods' config)

    cfg = load_config(args.config, args.overrides)
    import torch

    import gcd.methods  # noqa: F401  (registers the GCD datasets)

    with torch.no_grad():
        path = run_filter(cfg, args.out)
    print(f"concepts written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
