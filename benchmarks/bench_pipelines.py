"""Training input pipelines (``data.pipeline``): samples/s of one loader process, per pipeline.

    .venv/bin/python benchmarks/bench_pipelines.py                 # ~1 minute on a CPU
    .venv/bin/python benchmarks/bench_pipelines.py --device cuda   # the gpu pipeline on a GPU

Generated photos (JPEG, 500 x 375, the typical CUB / ImageNet size) go through the real
datamodules at 224 px: SimGCD's two views (Resize(256) + RandomCrop + flip + normalise, each) and
Dassl's one RandomResizedCrop view. Each pipeline reads the same training epoch with no worker
processes, so the figure is per CPU core; ``gpu`` is the loader's crop-box draws plus the
per-batch cut/resize/flip/normalise on ``--device`` (on a CPU device that work lands on the same
core, so the CPU figure is a lower bound of what it does beside a GPU). The cache build is timed
apart: it is paid once per fit. Writes ``benchmarks/results/pipelines_<device>.md``.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clipcore.data import ClassificationDataModule, DatasetSplits, Datum
from gcd.data import GCDDataModule

RESULTS = Path(__file__).resolve().parent / "results"


def write_photos(root: Path, n: int) -> list[Datum]:
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        # Smooth content plus noise, so JPEG decoding costs what it costs on a photo.
        base = np.kron(rng.integers(0, 256, (15, 20, 3)), np.ones((25, 25, 1)))
        pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        path = root / "train" / f"c{i % 2}" / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, quality=90)
        if i < 4:  # the GCD image_folder layout needs a test split; it is not read here
            (root / "test" / path.parent.name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / "test" / path.parent.name / path.name, quality=90)
        items.append(Datum(str(path), i % 2, f"c{i % 2}", i))
    return items


def epoch_rate(datamodule, device: torch.device) -> tuple[float, float]:
    """(seconds to build the cache, samples/s over one training epoch)."""
    start = time.perf_counter()
    loader = datamodule.train_dataloader()
    build = time.perf_counter() - start
    loader.sampler.set_epoch(0)
    images = 0
    start = time.perf_counter()
    for batch in loader:
        batch = datamodule.on_before_batch_transfer(batch, 0)
        key = "images" if "images" in batch else "image"
        images += len(batch[key])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return build, images / (time.perf_counter() - start)


FAMILIES = ("SimGCD, 2 views", "Dassl, 1 view")
PIPELINES = ("cpu", "cached", "gpu")


def pipeline_rates(root: Path, items: list[Datum], device: torch.device, *, image_size: int = 224,
                   num_workers: int = 0) -> list[dict]:
    """One training epoch of ``items`` (written by :func:`write_photos` under ``root``) through
    each family's datamodule under each pipeline: the cache build's seconds and samples/s."""
    splits = DatasetSplits(items, [], items[:2], ["c0", "c1"])
    (root / "splits.json").write_text('{"known_classes": ["c0"]}')
    rows = []
    for family in FAMILIES:
        for pipeline in PIPELINES:
            # gpu: the loader only draws crop boxes, so it runs in the main process.
            workers = 0 if pipeline == "gpu" else num_workers
            if family.startswith("SimGCD"):
                datamodule = GCDDataModule.from_name("image_folder", str(root), image_size=image_size, batch_size=32,
                                                     num_workers=workers, pin_memory=False, seed=0,
                                                     pipeline=pipeline)
            else:
                datamodule = ClassificationDataModule(splits, batch_size=32, image_size=image_size, seed=0,
                                                      num_workers=workers, pipeline=pipeline)
            if pipeline == "gpu" and device.type != "cpu":
                datamodule.prepare_train_images = (  # noqa: E731 - the cache on --device
                    lambda items, threads, dm=datamodule: dm.train_images.prepare(
                        items, device, dm.cache_memory_fraction, threads) or 0)
            build, rate = epoch_rate(datamodule, device)
            rows.append({"family": family, "pipeline": pipeline, "workers": workers, "cache_build_s": build,
                         "samples_per_s": rate})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        measured = pipeline_rates(Path(tmp), write_photos(Path(tmp), args.images), device)
    base = {r["family"]: r["samples_per_s"] for r in measured if r["pipeline"] == "cpu"}
    rows = [f"| {r['family']} | {r['pipeline']} | {r['cache_build_s']:.2f} | {r['samples_per_s']:,.0f} | "
            f"{r['samples_per_s'] / base[r['family']]:.1f}x |" for r in measured]
    table = "\n".join([
        f"Training loader, one process, {args.images} JPEG photos 500x375 -> 224 px, device {device}",
        "(python benchmarks/bench_pipelines.py)", "",
        "| views | data.pipeline | cache build s | samples/s | vs cpu |", "|---|---|---:|---:|---:|", *rows])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"pipelines_{device.type}.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
