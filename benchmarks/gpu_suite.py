"""One command for the training-step throughput of both families on one GPU.

    python -m benchmarks.gpu_suite                                 # one H100/H200: full sizes, random init
    python -m benchmarks.gpu_suite --preset tiny --device cpu      # the same code on tiny models (CI)

Steps, each at its shipped batch size and next to the reference-style step of its family:
CoOp+KDPL (b32, 1000 classes), CoOp+KDPL-CA (b32, top 1000 of the dictionary), MaPLe+KDPL (b4),
CoCoOp+KDPL (b1), PromptSRC+KDPL (b4) as `bench_kdpl.step` runs them (student ViT-B-32,
teacher ViT-H-14; reference-style = its five optimisations off), and the SpectralGCD student step
as `bench_gcd` runs it (ViT-B/16, 2 x 128 images; reference-style = plain frozen forward and a
host-side teacher cache). Random weights, no downloads; real ImageNet names and the KDPL-CA
dictionary with $CLIPCORE_ASSETS_DIR, else random strings of similar length.

Per row: images/s (median of timed steps, after warm-up), GFLOPs per step (counted on the meta
device), MFU (FLOPs per second over a bf16 matmul ceiling measured here first; fp32 on a CPU),
peak GPU memory, and the GPU's busy fraction (kernel time / wall time over profiled steps). On
the GPU the KDPL steps run with the frozen towers' bf16 copies (`clipcore.compute_dtype`) and the
student under bf16 autocast. Loader throughput: each family's training datamodule (SimGCD: two
views; Dassl: one) under each `data.pipeline` (cpu, cached, and gpu with its cache on the device)
on generated 500 x 375 JPEGs, with the GPU config's 8 workers (gpu: none, its loader only draws
crop boxes). Writes
benchmarks/results/gpu_suite_<preset>_<device>.{json,md}.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import bench_gcd, bench_kdpl, bench_pipelines  # noqa: E402
from benchmarks._common import class_lists, machine_description, markdown_table, meta_mode, scaled_config  # noqa: E402
from clipcore.backbone import load_backbone  # noqa: E402
from clipcore.compute_dtype import FrozenComputeCopies  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PRESETS = {
    "full": dict(bench_kdpl.PRESETS["full"], gcd_batch=128, gcd_k=1000, gcd_n=6000, gcd_classes=200,
                 loader_images=512, workers=8),
    # The code path of "full" at toy sizes: 9 student blocks (MaPLe's and PromptSRC's prompt
    # depth), a 2-block teacher; FLOP counting on the meta device dominates its time on a CPU.
    # 40 loader images: more than one batch of 32 (training loaders drop an incomplete last batch).
    "tiny": dict(student="ViT-B-32-quickgelu", teacher="ViT-B-16-quickgelu", width_div=16, image_size=64,
                 student_layers=9, teacher_layers=2,
                 teacher_patch=32, batch=2, cocoop_batch=1, n_classes=12, dict_size=48, k=6, zs_templates=1,
                 gcd_batch=2, gcd_k=16, gcd_n=32, gcd_classes=8, loader_images=40, workers=0),
}
# (row, learner, KDPL-CA, shipped batch; None: the preset's tiny batch)
KDPL_ROWS = [("CoOp+KDPL", "coop", False, 32), ("CoOp+KDPL-CA", "coop", True, 32), ("MaPLe+KDPL", "maple", False, 4),
             ("CoCoOp+KDPL", "cocoop", False, 1), ("PromptSRC+KDPL", "promptsrc", False, 4)]
KDPL_LABELS = [label for label, *_ in KDPL_ROWS]
ROWS = [*KDPL_LABELS, "SpectralGCD", "loaders"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_step_seconds(step, device, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_ceiling(device: torch.device) -> float:
    """FLOP/s of a large square matmul in the compute dtype (bf16 on a GPU, fp32 on a CPU)."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (512, torch.float32)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    seconds = median_step_seconds(lambda: a @ b, device, 2, 10)
    return 2 * n ** 3 / seconds


def busy_fraction(step, device, n: int = 3):
    """Kernel time over wall time for ``n`` steps run back to back (None without a GPU)."""
    if device.type != "cuda":
        return None
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    sync(device)
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            step()
        sync(device)
    wall = time.perf_counter() - start
    kernel_us = sum(e.self_device_time_total for e in prof.key_averages() if e.device_type == DeviceType.CUDA)
    return kernel_us / 1e6 / wall


def measure(step, device, args, flops: float, ceiling: float, reference: bool = False) -> dict:
    """Reference-style steps are slow (KDPL-CA's re-encodes 20,930 prompts x 77 tokens in fp32 at
    every step): they get one warm-up step, ``--reference-steps`` timed ones and no profiling."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    warmup, steps = (1, args.reference_steps) if reference else (args.warmup, args.steps)
    seconds = median_step_seconds(step, device, warmup, steps)
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None
    return {"step_s": seconds, "gflops_per_step": flops / 1e9, "mfu": flops / seconds / ceiling,
            "peak_memory_gib": peak, "busy_fraction": None if reference else busy_fraction(step, device)}


# ----- KDPL family -----------------------------------------------------------------------------
def guarded(label: str, device: torch.device, measure_row) -> dict:
    """``measure_row()``, or, when it fails (out of memory, say), a row naming the error: one
    failing step costs neither the other rows nor a rerun of the whole suite (``--rows``)."""
    try:
        return measure_row()
    except Exception as exc:  # noqa: BLE001 - reported in its row; the suite goes on
        print(f"  {label}: failed, {type(exc).__name__}: {exc}", flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return {"row": label, "error": f"{type(exc).__name__}: {exc}"}


def kdpl_rows(p: dict, device: torch.device, args, ceiling: float, wanted: set[str]) -> list[dict]:
    names = class_lists(p["n_classes"], p["dict_size"])
    meta = torch.device("meta")
    student, teacher = bench_kdpl.build_backbones(p, device)
    meta_backbones = bench_kdpl.build_backbones(p, meta)
    copies = FrozenComputeCopies([student.model, teacher.model], torch.bfloat16) if device.type == "cuda" else None

    def row(label: str, learner_name: str, ca: bool, shipped: int) -> dict:
        batch = shipped if p["width_div"] == 1 else (p["cocoop_batch"] if learner_name == "cocoop" else p["batch"])
        q = dict(p, batch=batch, cocoop_batch=batch)
        variants = bench_kdpl.variants(learner_name, all_off=True)
        flops = {}
        with meta_mode(list(meta_backbones)):
            s = bench_kdpl.make_setup(q, meta, *meta_backbones, ca, names, torch.float32)
            learner = bench_kdpl.build_learner(learner_name, s, 1)
            for key in ("on", "all"):
                with FlopCounterMode(display=False) as counter:
                    bench_kdpl.step(s, learner, None, variants[key], s.images[batch])
                learner.zero_grad(set_to_none=True)
                text = 0 if variants[key]["text_cache"] else bench_kdpl.text_flops(s, variants[key]["truncate"])
                flops[key] = counter.get_total_flops() + text
        s = bench_kdpl.make_setup(q, device, student, teacher, ca, names, torch.bfloat16)
        learner = bench_kdpl.build_learner(learner_name, s, p["zs_templates"])
        optimizer = torch.optim.SGD(learner.parameters(), lr=2e-3, momentum=0.9)
        images = s.images[batch]
        out = {"row": label, "batch": batch}
        for key, name in (("on", "now"), ("all", "reference")):
            held = copies is not None and key == "on"

            def step(v=variants[key], held=held):
                if held:
                    copies.swap_in()
                try:
                    bench_kdpl.step(s, learner, optimizer, v, images)
                finally:
                    if held:
                        copies.swap_out()
            out[name] = measure(step, device, args, flops[key], ceiling, reference=key == "all")
        return finish(out, batch)

    rows = []
    for label, learner_name, ca, shipped in KDPL_ROWS:
        if label in wanted:
            rows.append(guarded(label, device, lambda: row(label, learner_name, ca, shipped)))
    return rows


# ----- SpectralGCD -----------------------------------------------------------------------------
def gcd_model(p: dict, device: torch.device):
    if p["width_div"] == 1:
        backbone = load_backbone("ViT-B-16-quickgelu", None, device=device)
    else:
        cfg = scaled_config("ViT-B-16-quickgelu", p["width_div"], p["image_size"])
        backbone = load_backbone(f"vit-b16/{p['width_div']}", config=cfg, device=device)
    model = bench_gcd.Student(backbone, p["gcd_k"], p["gcd_classes"]).to(device)
    model.image_px, model.n_classes = p["image_size"], p["gcd_classes"]
    return model


def gcd_row(p: dict, device: torch.device, args, ceiling: float) -> dict:
    batch = p["gcd_batch"]
    with torch.device("meta"):
        meta_model = gcd_model(p, torch.device("meta"))
    flops = {}
    for key, no_grad_frozen in (("now", True), ("reference", False)):
        images = torch.randn(2 * batch, 3, p["image_size"], p["image_size"], device="meta")
        with FlopCounterMode(display=False) as counter:
            rep, proj, logits = meta_model(images, no_grad_frozen)
            (rep.sum() + proj.sum() + logits.sum()).backward()
        flops[key] = counter.get_total_flops()
    model = gcd_model(p, device)
    rows_np = np.random.default_rng(0).standard_normal((p["gcd_n"], p["gcd_k"])).astype(np.float32)
    cache = {"dense": torch.from_numpy(rows_np).to(device, torch.float16), "dict": dict(enumerate(rows_np))}
    optimizer = torch.optim.SGD([q for q in model.parameters() if q.requires_grad], lr=1e-3, momentum=0.9)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext())
    out = {"row": "SpectralGCD", "batch": 2 * batch}
    for key, on in (("now", True), ("reference", False)):
        run = bench_gcd.make_step(model, optimizer, cache, batch, device, no_grad_frozen=on, dense_cache=on)

        def step(run=run):
            with autocast:
                run()
        out[key] = measure(step, device, args, flops[key], ceiling, reference=key == "reference")
    return finish(out, 2 * batch)


def finish(out: dict, images_per_step: int) -> dict:
    for key in ("now", "reference"):
        out[key]["images_per_s"] = images_per_step / out[key]["step_s"]
    out["speedup"] = out["now"]["images_per_s"] / out["reference"]["images_per_s"]
    print(f"  {out['row']}: {out['now']['images_per_s']:.1f} img/s, {out['speedup']:.2f}x the reference", flush=True)
    return out


# ----- input pipelines -------------------------------------------------------------------------
def loader_throughput(p: dict, device: torch.device) -> list[dict]:
    """Each family's training loader under each ``data.pipeline`` (cpu, cached, gpu with its cache on
    ``device``): samples/s over one epoch of generated 500 x 375 JPEG photos, and the cache build."""
    with tempfile.TemporaryDirectory() as tmp:
        items = bench_pipelines.write_photos(Path(tmp), p["loader_images"])
        rows = bench_pipelines.pipeline_rates(Path(tmp), items, device, image_size=p["image_size"],
                                              num_workers=p["workers"])
    for row in rows:
        print(f"  loader {row['family']}, {row['pipeline']}: {row['samples_per_s']:,.0f} samples/s "
              f"({row['workers']} workers)", flush=True)
    return rows


def markdown(results: dict) -> str:
    def num(x, fmt):
        return "—" if x is None else format(x, fmt)

    rows = [[r["row"], r["batch"], num(r["now"]["images_per_s"], ".1f"), num(r["reference"]["images_per_s"], ".1f"),
             f"{r['speedup']:.2f}x", f"{r['now']['gflops_per_step']:,.4g}", f"{r['reference']['gflops_per_step']:,.4g}",
             f"{100 * r['now']['mfu']:.1f}%", num(r["now"]["peak_memory_gib"], ".1f"),
             num(r["now"]["busy_fraction"] and 100 * r["now"]["busy_fraction"], ".0f")]
            if "error" not in r else [r["row"], f"failed: {r['error']}"] + [""] * 8
            for r in results["rows"]]
    table = markdown_table(["step", "images/step", "img/s", "reference img/s", "speed-up", "GFLOP/step",
                            "reference GFLOP/step", "MFU", "peak GiB", "GPU busy %"], rows)
    loaders = markdown_table(["training loader", "data.pipeline", "workers", "samples/s", "cache build s"],
                             [[r["family"], r["pipeline"], r["workers"], f"{r['samples_per_s']:,.0f}",
                               f"{r['cache_build_s']:.2f}"] for r in results["loaders"]])
    return (f"# Training-step throughput, preset `{results['preset']}` on {results['device']}\n\n"
            f"{results['machine']}\n\nMatmul ceiling: {results['matmul_ceiling_tflops']:.4g} TFLOP/s.\n\n"
            f"{table}\n\n{loaders}\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="full")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--reference-steps", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--rows", nargs="+", choices=ROWS, default=ROWS, metavar="ROW",
                    help=f"measure only these (default: all of {', '.join(ROWS)})")
    args = ap.parse_args(argv)
    wanted = set(args.rows)
    device, p = torch.device(args.device), PRESETS[args.preset]
    started = time.perf_counter()
    torch.manual_seed(0)
    ceiling = matmul_ceiling(device)
    print(f"matmul ceiling {ceiling / 1e12:.4g} TFLOP/s", flush=True)
    results = {"preset": args.preset, "device": str(device), "machine": machine_description(device),
               "matmul_ceiling_tflops": ceiling / 1e12, "workers": p["workers"],
               "loaders": loader_throughput(p, device) if "loaders" in wanted else [],
               "rows": kdpl_rows(p, device, args, ceiling, wanted) if wanted & set(KDPL_LABELS) else []}
    if "SpectralGCD" in wanted:
        results["rows"].append(guarded("SpectralGCD", device, lambda: gcd_row(p, device, args, ceiling)))
    results["seconds"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"gpu_suite_{args.preset}_{device.type}"
    if wanted != set(ROWS):  # a partial rerun does not replace the whole suite's results
        stem = stem.with_name(stem.name + "_" + "_".join(re.sub(r"[^a-z0-9]+", "-", r.lower()) for r in args.rows))
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1))
    text = markdown(results)
    stem.with_suffix(".md").write_text(text)
    print("\n" + text + f"\n{results['seconds']:.0f} s; written to {stem}.json and .md")
    failed = [r["row"] for r in results["rows"] if "error" in r]
    if failed:
        print(f"failed rows: {', '.join(failed)}; rerun them alone with --rows", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
