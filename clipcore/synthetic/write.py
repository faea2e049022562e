"""Write the ShapeWorld datasets to disk, in both layouts the readers consume.

    python -m clipcore.synthetic.write --root DIR [--seed 0] [--coop-shots 16] [--gcd-train 40]

gives ``DIR/shapeworld`` (CoOp layout: ``data.name=shapeworld data.root=DIR``) and
``DIR/shapeworld_gcd`` (GCD layout: ``data.name=image_folder data.root=DIR/shapeworld_gcd``).
Re-running with the same settings is a no-op; the world seed must match the one the synthetic
models were pretrained on (0) for their zero-shot accuracy to mean anything.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from clipcore.synthetic.layouts import write_coop_layout, write_gcd_layout
from clipcore.synthetic.world import ShapeWorld


@dataclass(frozen=True)
class WorldSizes:
    """Images per class of each split (the demo's defaults; tests pass smaller ones)."""

    coop_train: int = 16
    coop_val: int = 4
    coop_test: int = 20
    gcd_train: int = 40
    gcd_test: int = 20


def write_world(root: str | Path, world: ShapeWorld | None = None,
                sizes: WorldSizes = WorldSizes()) -> tuple[Path, Path]:
    """Write (or reuse) both layouts under ``root``; returns (coop_dir, gcd_dir)."""
    world = world or ShapeWorld()
    coop = write_coop_layout(root, world, sizes.coop_train, sizes.coop_val, sizes.coop_test)
    gcd = write_gcd_layout(root, world, sizes.gcd_train, sizes.gcd_test)
    return coop, gcd


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clipcore.synthetic.write", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = WorldSizes()
    parser.add_argument("--root", type=Path, required=True, help="folder to write shapeworld/ and shapeworld_gcd/ into")
    parser.add_argument("--seed", type=int, default=0, help="world seed (the synthetic models use 0)")
    parser.add_argument("--coop-shots", type=int, default=defaults.coop_train, help="CoOp train images per class")
    parser.add_argument("--coop-test", type=int, default=defaults.coop_test, help="CoOp test images per class")
    parser.add_argument("--gcd-train", type=int, default=defaults.gcd_train, help="GCD train images per class")
    parser.add_argument("--gcd-test", type=int, default=defaults.gcd_test, help="GCD test images per class")
    args = parser.parse_args(argv)
    sizes = WorldSizes(coop_train=args.coop_shots, coop_test=args.coop_test, gcd_train=args.gcd_train,
                       gcd_test=args.gcd_test)
    coop, gcd = write_world(args.root, ShapeWorld(seed=args.seed), sizes)
    print(f"CoOp layout: {coop}  (data.name=shapeworld data.root={args.root})")
    print(f"GCD layout:  {gcd}  (data.name=image_folder data.root={gcd})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
