"""bf16 autocast against fp32 for a frozen image tower on this CPU, at two sizes.

    .venv/bin/python benchmarks/bench_cpu_precision.py     # ~2 minutes on 2 cores

Whether bf16 pays on a CPU depends on two things this prints: the CPU's bf16 instructions
(`avx512_bf16` / `amx_bf16` in /proc/cpuinfo) and the size of the matmuls. At the widths of
`bench_kdpl.py --preset cpu-small` (÷8) the casts autocast adds at every call cost more than the
bf16 matmuls save; at real widths the matmuls dominate. Both sizes run interleaved in one
process, so the ratios compare like with like on a shared machine. Random weights, no downloads.
Writes ``benchmarks/results/cpu_precision_<vendor>.md`` (one file per CPU vendor: the answer
differs between them).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import open_clip
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import machine_description, markdown_table, scaled_config  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = {  # name: (open_clip model, width divisor, image size, patch size, batch)
    "ViT-B/16, real widths, 224 px": ("ViT-B-16", 1, 224, None, 8),
    "ViT-H/14 at cpu-small (widths ÷8, 112 px, patch 28)": ("ViT-H-14-quickgelu", 8, 112, 28, 4),
}


def cpuinfo(field: str) -> str:
    """The first ``field`` line of /proc/cpuinfo ("" where there is none)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    return next((line.split(":", 1)[1].strip() for line in lines if line.split(":")[0].strip() == field), "")


def cpu_flags() -> str:
    return ", ".join(f for f in cpuinfo("flags").split() if "bf16" in f) or "none"


def cpu_vendor() -> str:
    """``intel``, ``amd`` or ``other``, from /proc/cpuinfo's vendor_id."""
    return {"GenuineIntel": "intel", "AuthenticAMD": "amd"}.get(cpuinfo("vendor_id"), "other")


def build(model: str, width_div: int, image_size: int, patch: int | None) -> torch.nn.Module:
    if width_div == 1:
        cfg = open_clip.get_model_config(model)
    else:
        cfg = scaled_config(model, width_div, image_size, patch)
    net = open_clip.model.CLIP(**cfg).visual.eval()
    return net.requires_grad_(False)


def forward(net: torch.nn.Module, images: torch.Tensor, bf16: bool) -> None:
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        net(images)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    nets = {}
    for label, (model, div, size, patch, batch) in SIZES.items():
        nets[label] = (build(model, div, size, patch), torch.randn(batch, 3, size, size))
    times = {(label, bf16): [] for label in nets for bf16 in (False, True)}
    for round_index in range(args.rounds + 1):  # round 0 warms up
        for (label, bf16), samples in times.items():
            net, images = nets[label]
            start = time.perf_counter()
            forward(net, images, bf16)
            if round_index:
                samples.append(time.perf_counter() - start)
    rows = []
    for label, (_, images) in nets.items():
        fp32, bf16 = (statistics.median(times[label, b]) for b in (False, True))
        batch = images.shape[0]
        rows.append([label, batch, f"{batch / fp32:.1f}", f"{batch / bf16:.1f}", f"{fp32 / bf16:.2f}×"])
    table = markdown_table(["image tower", "batch", "fp32 img/s", "bf16 autocast img/s",
                            "bf16 speed-up"], rows)
    text = (f"# bf16 autocast vs fp32 on the CPU\n\n{machine_description(torch.device('cpu'))}; "
            f"bf16 instructions: {cpu_flags()}\n\nno_grad forward, median of {args.rounds} "
            f"interleaved rounds.\n\n{table}\n")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"cpu_precision_{cpu_vendor()}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
