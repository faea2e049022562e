"""KDPL training step: throughput and FLOPs with each of five optimisations on and off.

    .venv/bin/python benchmarks/bench_kdpl.py --preset cpu-small            # a few minutes on a CPU
    .venv/bin/python benchmarks/bench_kdpl.py --preset full --device cuda   # real sizes, one GPU
    CLIPCORE_ASSETS_DIR=../shared/assets .venv/bin/python benchmarks/bench_kdpl.py ...  # real class names

One step = what `kdpl.module.PromptLearningModule.training_step` does for KDPL: frozen teacher image
tower → teacher logits (student temperature) → class selection (KDPL-CA only) → student prompt
learner on the selected classes → symmetric KL (+ PromptSRC's L_SCL) → backward → SGD step.
Configurations: `kdpl` (C dataset classes, no selection) and `kdpl_ca` (top-K of a D-name
dictionary). Presets (random weights everywhere, `load_backbone(name, None)`):

* `full`: student ViT-B-32-quickgelu, teacher ViT-H-14-quickgelu, 224 px, batch 32 (CoCoOp 4: it
  encodes B×K prompts; the reference trains CoCoOp with batch 1), C = 1000, D = 20,930, K = 1000.
* `cpu-small`: the same layouts (depths, patch counts, 77-token context) with widths ÷8, 112 px
  (teacher patch 28: 16 patches like the student), batch 4 (CoCoOp 2), C = 64, D = 256, K = 32.

Optimisations ("on" = this framework, "off" = the reference, spec kdpl.md §2, §6); each row
turns one off, all others on, and the last row turns all five off:

1. `teacher_amp`: teacher image (and, when re-encoded, text) tower under no_grad + autocast
   (bf16; fp16 with --amp-dtype) vs fp32 with grad mode on. The teacher's weights are frozen, so
   the fp32 path records no graph either: the difference is the precision.
2. `text_cache`: normalised teacher text features computed once vs re-encoded every step.
3. `assemble_selected`: prompts assembled (token ids indexed, then embedded) only for the
   selected classes vs the full C×77×W prompt tensor assembled and then indexed (implemented
   here by overriding the learner's `_assemble` on the instance; n/a for VPT's fixed text).
4. `truncate`: text towers cut after the longest EOT of the prompts they encode vs all 77 tokens
   (`PromptLearner.truncate_text`; also the teacher's text when re-encoded).
5. `topk`: class selection with torch.topk on the device vs softmax/mean/np.argpartition on the
   host (in `kdpl` the reference still runs argpartition with K = C and indexes; we skip it).

Timing: one process, all variants interleaved round-robin after `--warmup` rounds (so machine
noise hits them alike), median of `--steps` rounds; img/s = batch / median step time.
Student precision follows configs/trainer: bf16 autocast on CUDA, fp32 on CPU. FLOPs: always the
`full` preset, counted by torch.utils.flop_counter.FlopCounterMode (matmuls, convolutions,
attention; forward and backward) on models built on the meta device, with a fixed seeded set of
K classes for KDPL-CA (the selection itself has no value on meta). Dtype does not change FLOPs, so
optimisations 1, 3, 5 show equal counts. Results: printed and written to
benchmarks/results/kdpl_<preset>_<device>.md.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import class_lists, machine_description, markdown_table, meta_mode, scaled_config  # noqa: E402
from clipcore.backbone import load_backbone  # noqa: E402
from kdpl.distill import mean_teacher_probs, symmetric_kl, topk_classes  # noqa: E402
from kdpl.prompts import build_prompt_learner, promptsrc  # noqa: E402
from kdpl.prompts.layout import Prompts  # noqa: E402

PRESETS = {
    "full": dict(student="ViT-B-32-quickgelu", teacher="ViT-H-14-quickgelu", width_div=1, image_size=224,
                 teacher_patch=None, batch=32, cocoop_batch=4, n_classes=1000, dict_size=20930, k=1000,
                 zs_templates=60),
    "cpu-small": dict(student="ViT-B-32-quickgelu", teacher="ViT-H-14-quickgelu", width_div=8, image_size=112,
                      teacher_patch=28, batch=4, cocoop_batch=2, n_classes=64, dict_size=256, k=32, zs_templates=1),
}
OPTS = ["teacher_amp", "text_cache", "assemble_selected", "truncate", "topk"]
LEARNERS = ["coop", "cocoop", "vpt", "maple", "promptsrc"]
NOT_APPLICABLE = {"vpt": {"assemble_selected", "truncate"}}  # VPT's student text is a fixed buffer
TEACHER_TEMPLATE = "a photo of a {}."


def variants(learner: str, all_off: bool, bf16_row: bool = False) -> dict[str, dict]:
    on = {o: True for o in OPTS}
    out = {"on": on} | {o: on | {o: False} for o in OPTS if o not in NOT_APPLICABLE.get(learner, ())}
    if bf16_row:  # CPU: the baseline teacher is no_grad fp32; this row adds bf16 autocast
        out["bf16"] = on | {"amp_dtype": torch.bfloat16}
    if all_off:
        out["all"] = {o: False for o in OPTS}
    return out


@dataclass
class Setup:
    """Everything a step needs for one (preset, configuration) on one device."""
    device: torch.device
    student: object
    teacher: object
    classnames: list[str]
    ca: bool
    k: int
    amp_dtype: torch.dtype
    teacher_tokens: torch.Tensor = None  # CPU
    teacher_eot: torch.Tensor = None
    text_cache: torch.Tensor = None  # normalised, on device
    flop_idx: torch.Tensor = None  # meta only: a fixed selection (CPU)
    images: dict = field(default_factory=dict)
    text_flops: dict = field(default_factory=dict)  # meta only: truncate -> FLOPs of re-encoding

    @property
    def meta(self) -> bool:
        return self.device.type == "meta"

    def autocast(self, enabled: bool, dtype=None):
        dtype = dtype or self.amp_dtype
        if self.meta or dtype == torch.float32:
            return contextlib.nullcontext() if enabled or self.meta else torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=dtype, enabled=enabled)


def build_backbones(p: dict, device: torch.device):
    def load(name, patch, layers):
        if p["width_div"] == 1:
            return load_backbone(name, None, device=device)
        cfg = scaled_config(name, p["width_div"], p["image_size"], patch, layers)
        return load_backbone(f"{name}/{p['width_div']}", None, config=cfg, device=device)

    context = torch.device("meta") if device.type == "meta" else contextlib.nullcontext()
    with context:  # on meta the weights are never materialised
        student = load(p["student"], None, p.get("student_layers"))
        teacher = load(p["teacher"], p["teacher_patch"], p.get("teacher_layers"))
    return student.freeze().eval(), teacher.freeze().eval()


def encode_teacher_text(s: Setup, truncate: bool, chunk: int = 512) -> torch.Tensor:
    """Normalised teacher text features of every class prompt, in chunks."""
    out = []
    for tokens, eot in zip(s.teacher_tokens.split(chunk), s.teacher_eot.split(chunk)):
        if truncate:
            tokens = tokens[:, : int(eot.max()) + 1]
        emb = s.teacher.token_embedding(tokens.to(s.device))
        out.append(s.teacher.encode_text_embeddings(emb, eot, truncate=truncate).float())
    return F.normalize(torch.cat(out), dim=-1)


def make_setup(p: dict, device: torch.device, student, teacher, ca: bool, names, amp_dtype) -> Setup:
    classnames = names[1] if ca else names[0]
    s = Setup(device, student, teacher, classnames, ca, p["k"], amp_dtype)
    s.teacher_tokens = teacher.tokenize([TEACHER_TEMPLATE.format(c) for c in classnames])
    s.teacher_eot = teacher.eot_index(s.teacher_tokens)
    with torch.no_grad():
        s.text_cache = (torch.empty(len(classnames), teacher.embed_dim, device=device) if s.meta
                        else encode_teacher_text(s, truncate=True))
    gen = torch.Generator().manual_seed(0)
    for b in {p["batch"], p["cocoop_batch"]}:
        s.images[b] = torch.randn(b, 3, p["image_size"], p["image_size"], generator=gen).to(device)
    if s.meta and ca:
        s.flop_idx = torch.randperm(len(classnames), generator=gen)[: p["k"]]
    return s


def select(s: Setup, logits: torch.Tensor, on_device: bool):
    """Selected class indices, or None for "all classes" (KDPL without selection)."""
    if s.meta:
        return s.flop_idx if s.ca else (None if on_device else torch.arange(logits.shape[1]))
    if on_device:
        return topk_classes(mean_teacher_probs(logits), s.k) if s.ca else None
    # The reference: logits to host numpy, per-row softmax, batch mean, argpartition.
    x = logits.detach().float().cpu().numpy()
    x = np.exp(x - x.max(axis=1, keepdims=True))
    probs = (x / x.sum(axis=1, keepdims=True)).mean(axis=0)
    k = s.k if s.ca else probs.shape[0]
    return torch.from_numpy(np.argpartition(probs, -k)[-k:].copy()).to(logits.device)


@contextlib.contextmanager
def full_assembly(learner, enabled: bool):
    """The reference's assembly: the whole C×77×W prompt tensor, then index the selected classes."""
    if not enabled:
        yield
        return
    assemble = type(learner)._assemble

    def _assemble(ctx, class_indices):
        truncate, learner.truncate_text = learner.truncate_text, False
        try:
            full = assemble(learner, ctx, None)
        finally:
            learner.truncate_text = truncate
        idx = class_indices.to(full.embeddings.device)
        return Prompts(full.embeddings[..., idx, :, :], full.eot[class_indices.to(full.eot.device)],
                       learner._prompt_layout(class_indices))

    learner._assemble = _assemble
    try:
        yield
    finally:
        del learner._assemble


def step(s: Setup, learner, optimizer, v: dict[str, bool], images: torch.Tensor) -> None:
    """One KDPL training step (kdpl/module.py::training_step) with the optimisations in `v`."""
    with s.autocast(s.device.type == "cuda", torch.bfloat16):  # the student's bf16-mixed on GPU
        teacher_ctx = (s.autocast(True, v.get("amp_dtype")) if v["teacher_amp"] else s.autocast(False))
        with teacher_ctx, (torch.no_grad() if v["teacher_amp"] else contextlib.nullcontext()):
            feats = s.teacher.encode_image(images if v["teacher_amp"] or s.meta else images.float())
            if v["text_cache"] or s.meta:  # on meta its FLOPs are counted once, in flops_learner
                text = s.text_cache
            else:
                text = encode_teacher_text(s, v["truncate"])
        scale = s.student.logit_scale.detach().float().exp()
        t_logits = scale * F.normalize(feats.float(), dim=-1) @ text.float().t()
        idx = select(s, t_logits, v["topk"])
        if idx is not None:
            t_logits = t_logits[:, idx.to(t_logits.device)]
        elif not v["assemble_selected"]:
            idx = torch.arange(len(s.classnames), device=s.device if not s.meta else "cpu")
        learner.truncate_text = v["truncate"]
        with full_assembly(learner, not v["assemble_selected"] and learner.name != "vpt"):
            out = learner(images, class_indices=idx)
        loss = symmetric_kl(out.logits, t_logits)[0] + learner.regularization_loss(out)[0]
    loss.backward()
    if optimizer is not None:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def build_learner(name: str, s: Setup, zs_templates: int | None = None):
    """PromptSRC precomputes zero-shot text features for 60 templates × C classes at build time
    (not part of the step): `zs_templates` keeps only the first few of them."""
    torch.manual_seed(0)
    with mock.patch.object(promptsrc, "PROMPTSRC_TEMPLATES", promptsrc.PROMPTSRC_TEMPLATES[:zs_templates]):
        return build_prompt_learner(name, s.student, s.classnames).train()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_learner(s: Setup, name: str, p: dict, args) -> dict[str, float | str]:
    learner = build_learner(name, s, args.zs_templates or p["zs_templates"])
    optimizer = torch.optim.SGD(learner.parameters(), lr=2e-3, momentum=0.9)
    batch = p["cocoop_batch"] if name == "cocoop" else p["batch"]
    vs, times, failed = variants(name, args.all_off, args.bf16_row), {}, {}
    for r in range(args.warmup + args.steps):
        for key, v in vs.items():
            if key in failed:
                continue
            try:
                sync(s.device)
                t0 = time.perf_counter()
                step(s, learner, optimizer, v, s.images[batch])
                sync(s.device)
            except torch.cuda.OutOfMemoryError:
                failed[key] = "OOM"
                optimizer.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                continue
            if r >= args.warmup:
                times.setdefault(key, []).append(time.perf_counter() - t0)
    learner.truncate_text = True
    result = {k: batch / statistics.median(t) for k, t in times.items()}
    print(f"  {name}: " + ", ".join(f"{k} {x:.2f} img/s" for k, x in result.items()), flush=True)
    return result | failed


def text_flops(s: Setup, truncate: bool) -> int:
    """FLOPs of re-encoding every teacher prompt (the same for all learners: counted once)."""
    if truncate not in s.text_flops:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            encode_teacher_text(s, truncate)
        s.text_flops[truncate] = counter.get_total_flops()
    return s.text_flops[truncate]


def flops_learner(s: Setup, name: str, p: dict, all_off: bool) -> dict[str, float]:
    with meta_mode([s.student, s.teacher]):
        learner = build_learner(name, s, 1)  # FLOPs of a step do not depend on it
        batch = p["cocoop_batch"] if name == "cocoop" else p["batch"]
        out = {}
        for key, v in variants(name, all_off).items():
            with FlopCounterMode(display=False) as counter:
                step(s, learner, None, v, s.images[batch])
            learner.zero_grad(set_to_none=True)
            out[key] = (counter.get_total_flops() + (0 if v["text_cache"] else text_flops(s, v["truncate"]))) / 1e9
    print(f"  {name} FLOPs: " + ", ".join(f"{k} {x:,.0f} G" for k, x in out.items()), flush=True)
    return out


def run(preset: str, device: torch.device, args, names, fn) -> dict:
    p = dict(PRESETS[preset])
    if args.cocoop_batch:
        p["cocoop_batch"] = args.cocoop_batch
    student, teacher = build_backbones(p, device)
    results = {}
    for config in args.configs:
        t0 = time.perf_counter()
        s = make_setup(p, device, student, teacher, config == "kdpl_ca", names[preset], args.amp_dtype)
        print(f"[{preset} on {device}] {config}: {len(s.classnames)} classes "
              f"(setup {time.perf_counter() - t0:.1f}s)", flush=True)
        for name in args.learners:
            results[config, name] = fn(s, name, p, args)
    return results


def describe(preset: str) -> str:
    p = PRESETS[preset]
    scale = "" if p["width_div"] == 1 else f", widths ÷{p['width_div']}"
    patch = f" (teacher patch {p['teacher_patch']})" if p["teacher_patch"] else ""
    return (f"`{preset}`: student {p['student']}, teacher {p['teacher']}{scale}, {p['image_size']} px{patch}, "
            f"batch {p['batch']} (CoCoOp {p['cocoop_batch']}), kdpl C={p['n_classes']}, "
            f"kdpl_ca K={p['k']} of D={p['dict_size']}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=list(PRESETS), default="cpu-small")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--learners", nargs="+", choices=LEARNERS, default=LEARNERS)
    ap.add_argument("--configs", nargs="+", choices=["kdpl", "kdpl_ca"], default=["kdpl", "kdpl_ca"])
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--cocoop-batch", type=int, default=None)
    ap.add_argument("--zs-templates", type=int, default=None, help="PromptSRC build-time templates")
    ap.add_argument("--amp-dtype", choices=["bfloat16", "float16", "float32"], default=None,
                    help="teacher autocast dtype when optimisation 1 is on (default: bfloat16 on CUDA; on "
                         "CPU float32, i.e. no_grad only, plus a row timing bf16 autocast)")
    ap.add_argument("--all-off", action=argparse.BooleanOptionalAction, default=None,
                    help="also time all five off (default: on CUDA only; slow on a CPU)")
    ap.add_argument("--flops-from", type=Path, default=None, help="reuse FLOPs from a kdpl_flops_full.json")
    ap.add_argument("--no-flops", dest="flops", action="store_false")
    ap.add_argument("--no-timing", dest="timing", action="store_false")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.amp_dtype = getattr(torch, args.amp_dtype or ("bfloat16" if cuda else "float32"))
    args.bf16_row = not cuda and args.amp_dtype == torch.float32
    args.all_off = cuda if args.all_off is None else args.all_off
    names = {pr: class_lists(PRESETS[pr]["n_classes"], PRESETS[pr]["dict_size"]) for pr in {args.preset, "full"}}
    machine = machine_description(device)
    print(machine, flush=True)

    flops_path = args.out / "kdpl_flops_full.json"
    if args.flops_from:
        flops = {tuple(k.split("/")): v for k, v in json.loads(args.flops_from.read_text()).items()}
    elif args.flops:
        flops = run("full", torch.device("meta"), args, names, lambda s, n, p, a: flops_learner(s, n, p, True))
        args.out.mkdir(parents=True, exist_ok=True)
        flops_path.write_text(json.dumps({"/".join(k): v for k, v in flops.items()}, indent=1))
    else:
        flops = {}
    timing = run(args.preset, device, args, names, time_learner) if args.timing else {}

    amp = "" if args.amp_dtype == torch.float32 else f"+autocast {str(args.amp_dtype)[6:]}"
    labels = {"teacher_amp": f"1. teacher no_grad{amp} vs fp32 grad mode",
              "bf16": "1b. teacher +autocast bf16 (no_grad both)",
              "text_cache": "2. teacher text cached vs re-encoded", "assemble_selected":
              "3. assemble selected prompts vs all then index", "truncate": "4. text cut at EOT vs 77 tokens",
              "topk": "5. topk on device vs argpartition on host", "all": "all five (reference step)"}
    header = ["configuration", "optimisation", f"on img/s ({args.preset})", f"off img/s ({args.preset})",
              "speed-up", "GFLOPs/step on (full)", "GFLOPs/step off (full)"]
    rows = []
    for config, name in (timing or flops):
        t, f = timing.get((config, name), {}), flops.get((config, name), {})
        for key in [k for k in variants(name, args.all_off, args.bf16_row) if k != "on"]:
            on, off = t.get("on"), t.get(key)
            if key == "bf16":  # its "on" is the bf16 variant, its "off" the fp32 baseline
                on, off = off, on
            num = lambda x: f"{x:.2f}" if isinstance(x, float) else (x or "—")  # noqa: E731
            speed = f"{on / off:.2f}×" if isinstance(on, float) and isinstance(off, float) else "—"
            fl = lambda x: f"{x:,.0f}" if x is not None else "—"  # noqa: E731
            f_on, f_off = f.get("on"), f.get(key, f.get("on") if key == "bf16" else None)
            rows.append([f"{config} {name}", labels[key], num(on), num(off), speed, fl(f_on), fl(f_off)])
    table = markdown_table(header, rows)
    source = names["full"][2]
    text = (f"# KDPL training step, preset `{args.preset}` on {args.device}\n\n{machine}\n\n"
            f"Timing: {describe(args.preset) if timing else 'not run'}; warmup {args.warmup}, median of "
            f"{args.steps} interleaved rounds; student precision "
            f"{'bf16 autocast' if device.type == 'cuda' else 'fp32'}."
            f"\nFLOPs: {describe('full') if flops else 'not counted'} (meta device). Class names: {source}.\n\n"
            f"{table}\n")
    print("\n" + table)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"kdpl_{args.preset}_{device.type}.md"
    path.write_text(text)
    print(f"\nwritten to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
