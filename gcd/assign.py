"""Assign images to the discovered clusters with an exported GCD student.

    clipdistill assign --export runs/<exp>/<run>/exports/final --images FOLDER --out clusters.csv
    python -m gcd.assign ...  (the same command)

The export is self-contained apart from the student's pretrained weights (``student.*`` of its
config): the visual tower, ``ln_t``, the head and the concept text features come from the
export, so neither the dataset nor the concept CSV is needed. Every image under ``FOLDER``
(recursively, sorted) goes through the GCD test transform; ``clusters.csv`` has one
``path,cluster`` row per image, ``path`` relative to ``FOLDER``.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch


def load_exported_module(export_dir: str | Path, device: str | torch.device = "cpu"):
    """The ``GCDModule`` of an export, rebuilt from its own metadata (no dataset needed)."""
    from omegaconf import OmegaConf

    from clipcore.build import backbone_from_config
    from clipcore.config import from_plain
    from clipcore.export import read_export
    from clipcore.module import check_fingerprints
    from gcd.methods import gcd_module

    tensors, metadata = read_export(export_dir)
    if metadata["method"] not in ("spectralgcd", "simgcd"):
        from clipcore.export import ExportError

        raise ExportError(f"{export_dir}: a {metadata['method']!r} export, not a GCD one (spectralgcd, simgcd)")
    student = backbone_from_config(OmegaConf.create(metadata["student"]))
    module = gcd_module(from_plain(metadata["config"]), student, metadata["classnames"], metadata["n_old"],
                        concepts=metadata.get("concepts"), prompts=metadata.get("prompts"))
    check_fingerprints(metadata.get("backbone_fingerprints", {}), module.fingerprints())
    module.load_export(tensors, metadata)
    return module.to(device).eval(), metadata


def list_image_files(folder: Path) -> list[Path]:
    from clipcore.data import DataError
    from clipcore.data.readers import IMAGE_TYPES_HELP, is_image_file

    if not folder.is_dir():
        raise DataError(f"--images {folder}: expected a folder of images, but it does not exist")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p.name))
    if not files:
        raise DataError(f"--images {folder}: no image files under it ({IMAGE_TYPES_HELP})")
    return files


@torch.no_grad()
def assign_clusters(export_dir: str | Path, image_folder: str | Path, out_csv: str | Path, *,
                    batch_size: int = 64, device: str | torch.device | None = None) -> Path:
    """Write ``path,cluster`` rows for every image under ``image_folder``; returns ``out_csv``."""
    from clipcore.data import build_gcd_transform, load_image
    from clipcore.io import atomic_write

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    module, metadata = load_exported_module(export_dir, device)
    transform = build_gcd_transform(False, module.student.image_size,
                                    metadata.get("normalization", "imagenet"))
    folder = Path(image_folder)
    files = list_image_files(folder)
    clusters: list[int] = []
    for start in range(0, len(files), batch_size):
        images = torch.stack([transform(load_image(p)) for p in files[start:start + batch_size]])
        clusters += module(images.to(device))["logits"].argmax(dim=1).tolist()

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "cluster"])
            writer.writerows([p.relative_to(folder).as_posix(), c] for p, c in zip(files, clusters))

    return atomic_write(out_csv, write)


def main(argv: list[str] | None = None, prog: str = "python -m gcd.assign") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", type=Path, required=True, help="export folder of a GCD run")
    parser.add_argument("--images", type=Path, required=True, help="folder of images (searched recursively)")
    parser.add_argument("--out", type=Path, required=True, help="CSV to write (path,cluster)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    from clipcore.cli import prepare_environment, run_guarded

    def assign() -> int:
        prepare_environment()
        path = assign_clusters(args.export, args.images, args.out, batch_size=args.batch_size, device=args.device)
        print(f"clusters written to {path}")
        return 0

    return run_guarded(assign, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
