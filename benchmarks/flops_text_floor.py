"""FLOPs per KDPL training step against the text tower's exact floor, at real sizes.

    CLIPCORE_ASSETS_DIR=../shared/assets .venv/bin/python benchmarks/flops_text_floor.py

Student ViT-B-32-quickgelu, teacher ViT-H-14-quickgelu, 224 px, random weights on the meta
device (nothing is computed or downloaded), each step as `bench_kdpl.step` runs it with every
optimisation on, at its shipped batch size: CoOp+KDPL (batch 32, 1,000 ImageNet classes),
CoOp+KDPL-CA (batch 32, top 1,000 of the 20,930-name dictionary, a fixed seeded selection),
MaPLe+KDPL and PromptSRC+KDPL (batch 4), CoCoOp+KDPL (batch 1). Columns:

* before: prompts padded to the longest selected prompt (`PromptLearner.bucket_text = False`);
* now: the learners as shipped (prompts grouped by length, the shared prefix encoded once);
* floor: the step without its student text tower (that tower replaced by a FLOP-free stand-in
  of the same shape) plus the text tower's floor, counted by hand from the model's widths:
  every distinct (prompt, position) token once (the prefix once per prefix group: one, or one
  per image for CoCoOp; in the last block only its keys and values), attention only over the
  (query, key) pairs the causal mask allows, and the backward as `FlopCounterMode` counts it
  for frozen weights (grads of the inputs only: 1x the forward for a projection, 2x for
  attention). The "check" column applies the same hand count to the padded prompts, with the
  dense attention the kernel computes: it must equal the counted text tower of "before".

Writes benchmarks/results/flops_text_floor.json and .md.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from unittest import mock

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import bench_kdpl  # noqa: E402
from benchmarks._common import class_lists, markdown_table, meta_mode  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ROWS = [("CoOp+KDPL", "coop", False, 32), ("CoOp+KDPL-CA", "coop", True, 32),
        ("MaPLe+KDPL", "maple", False, 4), ("PromptSRC+KDPL", "promptsrc", False, 4),
        ("CoCoOp+KDPL", "cocoop", False, 1)]


def text_tower_flops(backbone, sequences: list[tuple[int, int, int]], n_pooled: int, dense: bool = False) -> int:
    """Hand count, forward + backward, of a causal text tower on ``sequences``: (copies, first
    position, end position) runs of tokens that attend to every earlier position, and
    ``n_pooled`` prompts projected at their EOT. ``dense``: every query of a run scores every
    key up to the run's end, as a masked dense attention kernel computes (and is counted)."""
    width, blocks = backbone.text_width, backbone.n_text_blocks
    hidden = backbone.text_blocks[0].mlp.c_fc.out_features
    per_token = 2 * width * 3 * width + 2 * width * width + 2 * 2 * width * hidden  # qkv, out, MLP
    per_pair = 2 * width + 2 * width  # q.k and the weighted sum of v, over all heads
    tokens = sum(copies * (end - start) for copies, start, end in sequences)
    # Query at position t attends to keys 0..t: pairs = sum of (t + 1) over the run.
    pairs = sum(copies * (end * (end + 1) - start * (start + 1)) // 2 for copies, start, end in sequences)
    if dense:
        pairs = sum(copies * (end - start) * end for copies, start, end in sequences)
    projection = 2 * width * backbone.embed_dim * n_pooled
    return 2 * blocks * tokens * per_token + 3 * blocks * pairs * per_pair + 2 * projection


def floor_text_flops(backbone, prefix: int, eot: torch.Tensor, n_groups: int) -> int:
    """The floor: the prefix once per group (in the last block only its keys and values, since it
    is never pooled), each prompt's own tokens up to its EOT (``eot`` `[C]`) once, causal
    attention pairs only."""
    p, width = prefix, backbone.text_width
    lengths = torch.bincount(eot.long() + 1).tolist()
    sequences = [(n_groups, 0, p)] + [(n_groups * count, p, length) for length, count in enumerate(lengths) if count]
    total = text_tower_flops(backbone, sequences, n_groups * len(eot))
    # The prefix's last block: of its full count (one block, no pooling) keep the k, v projections.
    last_block = text_tower_flops(backbone, [(n_groups, 0, p)], 0) // backbone.n_text_blocks
    keys_values = 2 * n_groups * p * 2 * width * 2 * width  # forward + backward
    return total - last_block + keys_values


def padded_sequences(layout, n_groups: int) -> list[tuple[int, int, int]]:
    return [(n_groups * sum(layout.counts), 0, layout.lengths[-1])]


@contextlib.contextmanager
def recorded_layouts(learner, into: list):
    """Record the layout and prefix groups of every text encoding of the learner."""
    encode = type(learner)._encode_prompts

    def _encode_prompts(prompts, hook=None):
        into.append((prompts.layout, prompts.eot.cpu(), prompts.embeddings[..., 0, 0, 0].numel()))
        return encode(learner, prompts, hook)

    with mock.patch.object(learner, "_encode_prompts", _encode_prompts):
        yield


@contextlib.contextmanager
def no_text_tower(learner):
    """The student text tower replaced by a stand-in without FLOPs that keeps the graph (so the
    rest of the step, backward included, is counted as before)."""
    def _encode_prompts(prompts, hook=None):
        emb = prompts.embeddings
        width = learner.backbone.embed_dim
        return emb[..., 0, :1].expand(*emb.shape[:-2], width) * 1.0

    with mock.patch.object(learner, "_encode_prompts", _encode_prompts):
        yield


def count(s, learner, batch: int) -> float:
    on = bench_kdpl.variants(learner.name, all_off=False)["on"]
    with FlopCounterMode(display=False) as counter:
        bench_kdpl.step(s, learner, None, on, s.images[batch])
    learner.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def measure(label: str, name: str, ca: bool, batch: int, backbones, names) -> dict:
    student, teacher = backbones
    p = dict(bench_kdpl.PRESETS["full"], batch=batch, cocoop_batch=batch)
    s = bench_kdpl.make_setup(p, torch.device("meta"), student, teacher, ca, names, torch.float32)
    learner = bench_kdpl.build_learner(name, s, 1)
    layouts: list = []
    learner.bucket_text = False
    before = count(s, learner, batch)
    learner.bucket_text = True
    with recorded_layouts(learner, layouts):
        now = count(s, learner, batch)
    with no_text_tower(learner):
        without_text = count(s, learner, batch)
    (layout, eot, groups), = layouts
    rows = sum(layout.counts) * groups
    floor_text = floor_text_flops(student, layout.prefix, eot, groups)
    padded_text = text_tower_flops(student, padded_sequences(layout, groups), rows, dense=True)
    g = 1e9
    out = {"before": before / g, "now": now / g, "floor": (without_text + floor_text) / g,
           "before_text_counted": (before - without_text) / g, "before_text_by_hand": padded_text / g,
           "prefix": layout.prefix, "prompts": rows, "longest": layout.lengths[-1], "buckets": list(layout.lengths)}
    print(f"  {label}: " + ", ".join(f"{k} {v:,.0f}" if isinstance(v, float) else f"{k} {v}"
                                     for k, v in out.items()), flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    classes, dictionary, source = class_lists(1000, 20930)
    backbones = bench_kdpl.build_backbones(bench_kdpl.PRESETS["full"], torch.device("meta"))
    results = {}
    with meta_mode(backbones):
        for label, name, ca, batch in ROWS:
            results[label] = measure(label, name, ca, batch, backbones, (classes, dictionary))
    header = ["step (shipped batch)", "before GFLOP", "now GFLOP", "floor GFLOP", "now / floor",
              "check: padded text counted / by hand"]
    table = markdown_table(header, [
        [f"{label}, b{batch}", f"{r['before']:,.0f}", f"{r['now']:,.0f}", f"{r['floor']:,.0f}",
         f"{r['now'] / r['floor']:.3f}", f"{r['before_text_counted']:,.0f} / {r['before_text_by_hand']:,.0f}"]
        for (label, _, _, batch), r in zip(ROWS, results.values())])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "flops_text_floor.json").write_text(json.dumps(results, indent=1))
    (args.out / "flops_text_floor.md").write_text(
        f"# KDPL step FLOPs against the text tower's floor\n\nMeta device, forward + backward; class "
        f"names: {source}.\n\n{table}\n")
    print("\n" + table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
