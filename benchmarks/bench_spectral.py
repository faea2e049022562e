"""Spectral filtering: time, peak memory and FLOPs of the covariance and Gram paths.

    .venv/bin/python benchmarks/bench_spectral.py --quick
    .venv/bin/python benchmarks/bench_spectral.py --n 6000 50000 --k 22131 --device cuda

Logits are synthetic teacher-like scores: cos(image, text)/τ for random unit vectors in a
``--dim``-dimensional space (low rank, like CLIP features), τ = 0.01.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` around the call (logits excluded);
on CPU every measurement runs in a fresh subprocess and reports the resident-set high-water
mark minus the RSS once the logits exist (tracemalloc cannot see torch's allocations); the
mark is reset through /proc/self/clear_refs (Linux), else ``resource.getrusage`` is used.
FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` on meta tensors counts the matrix products;
it has no formula for ``eigh``, so the eigendecomposition is added as an estimate, ~9n³ (Golub &
Van Loan, symmetric QR with eigenvectors; LAPACK's divide-and-conquer ``syevd`` is usually cheaper).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gcd.spectral import SpectralAccumulator, spectral_filter_details  # noqa: E402

GB = 1024 ** 3
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def make_logits(n: int, k: int, dim: int, device: str, seed: int = 0, tau: float = 0.01):
    gen = torch.Generator().manual_seed(seed)
    text = torch.nn.functional.normalize(torch.randn(k, dim, generator=gen), dim=1).to(device)
    logits = torch.empty(n, k, device=device)
    for start in range(0, n, 4096):  # chunked so the logits are the only N×K allocation
        img = torch.randn(min(4096, n - start), dim, generator=gen)
        img = torch.nn.functional.normalize(img, dim=1).to(device)
        logits[start:start + img.shape[0]] = img @ text.T / tau
    return logits


def estimate_bytes(n: int, k: int, path: str, eigh_bytes: int) -> int:
    """Working memory beyond the logits (float64 accumulators, eigh input/output/workspace)."""
    if path == "covariance":
        # float64 K×K accumulator, eigenvectors, syevd workspace (~2K²), float32 copy if any
        return k * k * (8 + 3 * eigh_bytes) + n * 2048 * 8
    # float32 row buffer, float64 Gram, eigenvectors, workspace, float64 column blocks
    return n * k * 4 + n * n * (8 + 3 * eigh_bytes) + 2 * n * 2048 * 8


def available_bytes(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info()[0]
    with open("/proc/meminfo") as handle:
        info = dict(line.split(":", 1) for line in handle)
    return int(info["MemAvailable"].split()[0]) * 1024


def _inplace_addmm_flop(self_shape, a_shape, b_shape, out_shape=None, **kwargs) -> int:
    """FlopCounterMode only knows out-of-place addmm; the accumulators use addmm_."""
    return 2 * a_shape[0] * a_shape[1] * b_shape[1]


def count_flops(n: int, k: int, path: str, k_e: int, batch: int) -> tuple[int, float]:
    """(matmul FLOPs counted on meta tensors, eigh estimate)."""
    acc = SpectralAccumulator(k, method=path, max_rows=n, device="meta")
    mapping = {torch.ops.aten.addmm_: _inplace_addmm_flop}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        for start in range(0, n, batch):
            acc.update(torch.empty(min(batch, n - start), k, device="meta"))
        matrix = acc.second_moment_matrix()
        values, vectors = torch.linalg.eigh(matrix)
        acc.scores_from_top(values[-k_e:], vectors[:, -k_e:])
    side = matrix.shape[0]
    return counter.get_total_flops(), 9.0 * side ** 3


def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_cpu_peak() -> int:
    """Reset the RSS high-water mark (Linux: /proc/self/clear_refs) and return the RSS in
    bytes; falls back to the lifetime peak (getrusage) where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return _proc_status_kb("VmRSS") * 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cpu_peak() -> int:
    try:
        return _proc_status_kb("VmHWM") * 1024
    except (OSError, KeyError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_one(cfg: dict) -> dict:
    """One measurement (in this process); returns a JSON-able dict."""
    device, n, k = cfg["device"], cfg["n"], cfg["k"]
    warm = torch.randn(64, 64, dtype=torch.float64, device=device)
    torch.linalg.eigh(warm @ warm.T)  # library loading and thread start-up are not timed
    logits = make_logits(n, k, cfg["dim"], device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = reset_cpu_peak()
    start = time.perf_counter()
    details = spectral_filter_details(logits, cfg["beta_e"], cfg["beta_c"], method=cfg["path"],
                                      batch_size=cfg["batch"],
                                      eigh_dtype=DTYPES[cfg["eigh_dtype"]])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = cpu_peak() - base
    return {"seconds": seconds, "extra_bytes": peak, "k_e": details.k_e,
            "n_keep": details.n_keep, "kept": sorted(details.kept.tolist()),
            "eigenvalues": details.eigenvalues.numel()}


def measure(cfg: dict) -> dict:
    if cfg["device"].startswith("cuda"):
        return run_one(cfg)
    # a fresh process per measurement: ru_maxrss is a lifetime high-water mark
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(cfg)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[6000, 50000])
    parser.add_argument("--k", type=int, default=22131)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--paths", nargs="+", default=["covariance", "gram"],
                        choices=["covariance", "gram"])
    parser.add_argument("--eigh-dtype", default="float64", choices=sorted(DTYPES))
    parser.add_argument("--dim", type=int, default=64, help="feature dim of the synthetic logits")
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--beta-e", type=float, default=0.95)
    parser.add_argument("--beta-c", type=float, default=0.99)
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument("--flops-only", action="store_true",
                        help="only FLOPs and memory estimates (no run; any size, any machine)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(json.loads(args.child))))
        return
    if args.quick:
        args.n, args.k = [300, 1500], 800

    eigh_bytes = 8 if args.eigh_dtype == "float64" else 4
    print(f"device={args.device} threads={torch.get_num_threads()} eigh={args.eigh_dtype} "
          f"torch={torch.__version__}\n")
    print("| N | K | path | time (s) | peak extra mem (GB) | est. mem (GB) | k_e | kept "
          "| matmul GFLOP | eigh GFLOP (est.) | status |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    results: dict[tuple[int, str], dict] = {}
    for n in args.n:
        for path in args.paths:
            need = estimate_bytes(n, args.k, path, eigh_bytes)
            cfg = dict(device=args.device, n=n, k=args.k, path=path, dim=args.dim,
                       batch=args.batch, beta_e=args.beta_e, beta_c=args.beta_c,
                       eigh_dtype=args.eigh_dtype)
            avail = 0 if args.flops_only else available_bytes(args.device) - n * args.k * 4
            if args.flops_only:
                status, res = "not run (--flops-only)", None
            elif need > 0.85 * avail:
                side = "K×K" if path == "covariance" else "N×N"
                status = (f"skipped: needs ~{need / GB:.1f} GB ({side} float64 matrix, "
                          f"eigenvectors, workspace), {avail / GB:.1f} GB free")
                res = None
            else:
                res = measure(cfg)
                status = "ok"
            k_e = res["k_e"] if res else min(n, args.k) - 1
            mm_flops, eigh_flops = count_flops(n, args.k, path, k_e, args.batch)
            results[(n, path)] = dict(res or {}, flops=mm_flops + eigh_flops)
            cells = ([f"{res['seconds']:.2f}", f"{res['extra_bytes'] / GB:.2f}"]
                     if res else ["–", "–"])
            print(f"| {n} | {args.k} | {path} | {cells[0]} | {cells[1]} | {need / GB:.2f} | "
                  f"{res['k_e'] if res else '–'} | {res['n_keep'] if res else '–'} | "
                  f"{mm_flops / 1e9:.1f} | {eigh_flops / 1e9:.1f} | {status} |", flush=True)

    print()
    for n in args.n:
        cov, gram = results.get((n, "covariance")), results.get((n, "gram"))
        if not cov or not gram:
            continue
        line = f"N={n}: FLOPs covariance/gram = {cov['flops'] / gram['flops']:.1f}x"
        if "seconds" in cov and "seconds" in gram:
            line += (f"; time covariance/gram = {cov['seconds'] / gram['seconds']:.1f}x"
                     f"; memory covariance/gram = "
                     f"{cov['extra_bytes'] / max(gram['extra_bytes'], 2 ** 20):.1f}x"
                     f"; same kept concepts: {cov['kept'] == gram['kept']}")
        print(line)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    main()
