"""Training-step throughput of the SpectralGCD student (spectralgcd spec 3-4, 9).

    python benchmarks/bench_gcd.py --preset full --device cuda     # ViT-B/16, 2 x 128 images, 224 px
    python benchmarks/bench_gcd.py --preset cpu-small              # scaled down for a CPU

One step = both views through the student (last block trained), cross-modal representations over
K concepts, ln_t, DINO head, every SimGCD loss plus forward/reverse KL against the teacher's cached
representations, backward, SGD step. Two switches, each timed on and off in the same run:

- ``frozen no_grad``: blocks below the trained one run under ``torch.no_grad()``
  (``encode_image_blocks(grad_from_block=...)``) vs. a plain forward (the reference);
- ``dense teacher cache``: teacher rows gathered from one [N, K] tensor on the device vs. the
  reference's dict of numpy rows turned into a tensor and copied to the device every step.

FLOPs of one step are counted with ``torch.utils.flop_counter`` on the meta device for the full
preset (no compute), so they are comparable across machines.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, machine_description, markdown_table, scaled_config  # noqa: E402

sys.path.insert(0, str(REPO))
from clipcore.backbone import load_backbone  # noqa: E402
from gcd.heads import DINOHead  # noqa: E402
from gcd.losses import gcd_total_loss  # noqa: E402

PRESETS = {
    # name: (student config or None for the real architecture, image px, images per view, K, N, classes)
    "full": (None, 224, 128, 1000, 6000, 200),
    "cpu-small": ("scaled", 112, 16, 400, 2000, 200),
}


class Student(torch.nn.Module):
    def __init__(self, backbone, n_concepts: int, n_classes: int, feature_dim: int = 768):
        super().__init__()
        self.backbone = backbone.freeze().unfreeze_last_vision_blocks(1)
        self.register_buffer("concepts", F.normalize(torch.randn(n_concepts, backbone.embed_dim), dim=-1))
        self.ln_t = torch.nn.Linear(n_concepts, feature_dim)
        self.head = DINOHead(feature_dim, n_classes)

    def forward(self, images, no_grad_frozen: bool):
        first_trained = self.backbone.n_vision_blocks - 1 if no_grad_frozen else None
        feats = self.backbone.encode_image_blocks(images, grad_from_block=first_trained)
        rep = F.normalize(feats.float(), dim=-1) @ self.concepts.t() / 0.01
        proj, logits = self.head(self.ln_t(rep))
        return rep, proj, logits


def make_step(model, optimizer, cache, batch_size: int, device, *, no_grad_frozen: bool, dense_cache: bool):
    images = torch.randn(2 * batch_size, 3, model.image_px, model.image_px, device=device)
    labels = torch.randint(0, model.n_classes, (batch_size,), device=device)
    labelled = torch.rand(batch_size, device=device) < 0.5
    index = torch.randint(0, cache["dense"].shape[0], (batch_size,))

    def step():
        if dense_cache:
            teacher = cache["dense"][index.to(device)].float()
        else:  # reference: python list of numpy rows -> array -> tensor -> device
            teacher = torch.tensor(np.array([cache["dict"][int(i)] for i in index])).to(device)
        teacher = torch.cat([teacher, teacher])
        rep, proj, logits = model(images, no_grad_frozen)
        loss = gcd_total_loss(proj, logits, labels, labelled, epoch=0, student_rep=rep, teacher_rep=teacher)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def time_steps(step, device, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build(preset: str, device):
    cfg_kind, px, batch, k, n, classes = PRESETS[preset]
    if cfg_kind is None:
        backbone = load_backbone("ViT-B-16-quickgelu", None, device=device)
    else:
        backbone = load_backbone("vit-b16-scaled", config=scaled_config("ViT-B-16-quickgelu", 4, px), device=device)
    model = Student(backbone, k, classes).to(device)
    model.image_px, model.n_classes = px, classes
    return model, batch, k, n


def flops_full() -> dict[str, float]:
    """GFLOPs of one full-preset step, counted on the meta device (nothing is computed)."""
    out = {}
    with torch.device("meta"):
        model, batch, k, n = build("full", torch.device("meta"))
    for label, no_grad_frozen in (("on", True), ("off", False)):
        images = torch.randn(2 * batch, 3, 224, 224, device="meta")
        with FlopCounterMode(display=False) as counter:
            rep, proj, logits = model(images, no_grad_frozen)
            (rep.sum() + proj.sum() + logits.sum()).backward()
        out[label] = counter.get_total_flops() / 1e9
        model.zero_grad(set_to_none=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-small")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model, batch, k, n = build(args.preset, device)
    rows_np = np.random.default_rng(0).standard_normal((n, k)).astype(np.float32)
    cache = {"dense": torch.from_numpy(rows_np).to(device, torch.float16),
             "dict": {i: rows_np[i] for i in range(n)}}
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def measure(**switches) -> float:
        with autocast:
            seconds = time_steps(make_step(model, optimizer, cache, batch, device, **switches),
                                 device, args.warmup, args.repeats)
        return 2 * batch / seconds

    rows = []
    for name, switch in (("frozen no_grad", "no_grad_frozen"), ("dense teacher cache", "dense_cache")):
        # Alternate on/off so that load changes on a shared machine hit both sides alike.
        on, off = [], []
        for _ in range(3):
            on.append(measure(**{"no_grad_frozen": True, "dense_cache": True}))
            off.append(measure(**{"no_grad_frozen": True, "dense_cache": True, switch: False}))
        on_speed, off_speed = statistics.median(on), statistics.median(off)
        rows.append([name, f"{on_speed:.1f}", f"{off_speed:.1f}", f"{on_speed / off_speed:.2f}x"])
    flops = flops_full()
    table = markdown_table(["optimisation", "on (img/s)", "off (img/s)", "speed-up"], rows)
    text = (f"# SpectralGCD training step, preset {args.preset}, device {device}\n\n"
            f"{machine_description(device)}\n\n{table}\n\n"
            f"GFLOPs of one full-preset step (ViT-B/16, 2 x 128 images at 224 px, K=1000, forward+backward, "
            f"meta device): frozen no_grad on {flops['on']:.0f}, off {flops['off']:.0f}.\n")
    out = REPO / "benchmarks" / "results" / f"gcd_{args.preset}_{device.type}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
