"""FLOPs of the label-free methods at real sizes (meta device; the same on every machine).

    python benchmarks/flops_label_free.py

- PromptKD's training step as the reference runs it: the PromptSRC student on ViT-B/16 (image
  features through its vision prompts, the projector, logits against the stored teacher text,
  backward) plus the PromptSRC teacher's image forward on ViT-L/14 (its text features are
  stored, so no text tower runs), batch 8, ``--classes`` classes; and one test image.
- UPL: the one-off zero-shot pass per training image (ViT-B/16 image tower) and its learner's
  supervised step (see flops_learners.py).

Writes ``benchmarks/results/flops_label_free.json`` and prints a table.
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


def gflops(fn) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops() / 1e9


def main(argv=None) -> int:
    from benchmarks._common import meta_mode
    from benchmarks.flops_learners import learner_settings
    from clipcore.backbone import load_backbone
    from kdpl.objectives.promptkd import PromptKDHead, distillation_loss
    from kdpl.prompts import build_prompt_learner

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", default="ViT-B-16")
    parser.add_argument("--teacher", default="ViT-L-14")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args(argv)
    names = [f"class {i}" for i in range(args.classes)]
    student = load_backbone(args.student, config=open_clip.get_model_config(args.student), device="meta").freeze()
    teacher = load_backbone(args.teacher, config=open_clip.get_model_config(args.teacher), device="meta").freeze()
    with meta_mode([student, teacher]):
        learner = build_prompt_learner("promptsrc", student, names, learner_settings("promptsrc"))
        teacher_learner = build_prompt_learner("promptsrc", teacher, names, learner_settings("promptsrc")).eval()
        head = PromptKDHead(student.embed_dim, teacher.embed_dim).to("meta")
        head.teacher_text = torch.empty(args.classes, teacher.embed_dim, device="meta")
        images = torch.empty(args.batch, 3, student.image_size, student.image_size, device="meta")

        def teacher_side():
            # The objective runs this under no_grad; the FLOP counter's module tracker fails on
            # no_grad forwards of meta tensors that require grad, and a forward counts the same.
            feats = F.normalize(teacher_learner.encode_images(images).float(), dim=-1)
            return (teacher_learner.logit_scale() * feats @ head.teacher_text.t()).detach()

        def student_side(teacher_logits):
            feats = F.normalize(head.projector(learner.encode_images(images).float()), dim=-1)
            logits = learner.logit_scale() * feats @ head.teacher_text.t()
            (1000.0 * distillation_loss(logits, teacher_logits, 1.0)).backward()

        teacher_logits = teacher_side()
        rows = {
            "promptkd_teacher_forward_per_step": gflops(teacher_side),
            "promptkd_student_step": gflops(lambda: student_side(teacher_logits)),
            "promptkd_test_image": gflops(lambda: head.projector.eval()(learner.encode_images(images[:1]).float())),
            "upl_zero_shot_pass_per_training_image": gflops(lambda: student.encode_image(images[:1])),
        }
    rows["promptkd_step"] = rows["promptkd_teacher_forward_per_step"] + rows["promptkd_student_step"]
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "flops_label_free.json"
    out.write_text(json.dumps({**vars(args), "gflops": rows}, indent=2))
    print(f"student {args.student}, teacher {args.teacher}, {args.classes} classes, batch {args.batch}:")
    print("| what | GFLOPs |\n|---|---:|")
    for name, value in rows.items():
        print(f"| {name} | {value:,.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
