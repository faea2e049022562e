"""Learned-parameter counts and FLOPs per training step of every prompt learner, at real sizes.

    python benchmarks/flops_learners.py [--model ViT-B-16] [--classes 100] [--batch 32]

Counted on the meta device (no weights, no data, the same on every machine) with
``torch.utils.flop_counter.FlopCounterMode``: one supervised step (forward, cross-entropy and
backward) of each learner on ``--batch`` images of the model's size and ``--classes`` class
prompts ("a photo of a <class>."), with each learner's shipped settings; and the cost of TPT per
test image (``kdpl.tpt``: the prediction before tuning, one tuning step on ``--views`` views, the
prediction after). Writes ``benchmarks/results/flops_learners_<model>.json`` and prints a table.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `benchmarks` as a package
RESULTS = Path(__file__).resolve().parent / "results"


def learner_settings(name: str) -> dict:
    from clipcore.config import load_config
    from clipdistill.app import CONFIG_DIR, register_config_sections

    register_config_sections()
    prompt = dict(load_config([CONFIG_DIR / "method" / f"{name}.yaml"]).prompt)
    if prompt.get("template", "") is None:
        prompt["template"] = "a photo of a {}."
    return prompt


def tpt_flops(learner, image_size: int, views: int) -> float:
    """GFLOPs of TPT on one test image, as ``PromptLearningModule._tpt_logits`` runs it: the
    original view before tuning, one entropy step on every view, the original view after."""
    from kdpl.tpt import avg_entropy, select_confident_samples

    learner.eval()
    images = torch.empty(views, 3, image_size, image_size, device="meta")
    counter = FlopCounterMode(display=False)
    # The module predicts the original view under no_grad; the FLOP counter's module tracker
    # fails on no_grad forwards of meta tensors that require grad, and a forward counts the same.
    with counter:
        learner(images[:1])
        output, _ = select_confident_samples(learner(images).logits, 0.1)
        avg_entropy(output).backward()
        learner(images[:1])
    return counter.get_total_flops() / 1e9


def step_flops(model: str, name: str, classes: int, batch: int, views: int = 64) -> dict:
    from benchmarks._common import meta_mode
    from clipcore.backbone import load_backbone
    from kdpl.prompts import build_prompt_learner

    backbone = load_backbone(model, config=open_clip.get_model_config(model), device="meta").freeze()
    with meta_mode([backbone]):
        learner = build_prompt_learner(name, backbone, [f"class {i}" for i in range(classes)],
                                       learner_settings(name))
        learner.train()
        images = torch.empty(batch, 3, backbone.image_size, backbone.image_size, device="meta")
        labels = torch.zeros(batch, dtype=torch.long, device="meta")
        counter = FlopCounterMode(display=False)
        with counter:
            output = learner(images)
            reg, _ = learner.regularization_loss(output)
            loss = F.cross_entropy(output.logits, labels) + reg
            loss.backward()
        tpt = tpt_flops(learner, backbone.image_size, views)
    return {"learner": name, "learned_parameters": sum(p.numel() for p in learner.parameters()),
            "gflops_per_step": counter.get_total_flops() / 1e9, "tpt_views": views, "tpt_gflops_per_image": tpt}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--learners", nargs="+", default=None)
    parser.add_argument("--views", type=int, default=64, help="TPT views per test image")
    args = parser.parse_args(argv)
    from kdpl.config import declared_learners

    names = args.learners or sorted(declared_learners())
    rows = [step_flops(args.model, name, args.classes, args.batch, args.views) for name in names]
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"flops_learners_{args.model}.json"
    out.write_text(json.dumps({"model": args.model, "classes": args.classes, "batch": args.batch, "rows": rows},
                              indent=2))
    print(f"{args.model}, {args.classes} classes, batch {args.batch}, one supervised step (forward + backward):")
    print(f"| learner | learned parameters | GFLOPs / step | GFLOPs / test image with TPT ({args.views} views) |")
    print("|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row['learner']} | {row['learned_parameters']:,} | {row['gflops_per_step']:,.0f} "
              f"| {row['tpt_gflops_per_image']:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
