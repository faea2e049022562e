"""Zero-shot on real images, through the tool and by hand: the numbers must be equal.

    pip install scikit-learn      # its 1,797 handwritten digits (8x8) are the real images
    python benchmarks/zeroshot_by_hand.py [--model synthetic-teacher] [--out runs/zeroshot-digits]

The digits are written as an image folder (every 5th image of each class is a test image,
upscaled to 32 px), then scored twice for each template setting:

1. by the tool: ``clipdistill eval method=zeroshot data.name=image_folder ...`` (a subprocess,
   exactly as a user runs it), which reads metrics.json and predictions.csv;
2. by hand: plain open_clip (``create_model_and_transforms`` on the model's local-dir bundle),
   torchvision-free image loading, the CLIP ensembling rule written out, and top-1 / top-5 /
   mean per-class recall counted with numpy.

It prints one table (and writes ``<out>/comparison.md``): top-1, top-5 and per-class recall from
each route, and how many images get a different prediction. The default model is the offline
demo's teacher (built and cached on first use); any open_clip model name works with network.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SETTINGS = {
    "one template": ['a photo of the number: "{}".'],
    "cifar18": "cifar18",
}


def write_digits(root: Path) -> Path:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    seen = {label: 0 for label in range(10)}
    for image, label in zip(digits.images, digits.target):
        split = "test" if seen[label] % 5 == 0 else "train"
        seen[label] += 1
        folder = root / split / f"{label}_{WORDS[label]}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (255 - image * 255 / 16).astype("uint8")  # dark ink on white, as printed digits
        Image.fromarray(pixels).resize((32, 32), Image.NEAREST).convert("RGB").save(folder / f"{seen[label]:04d}.png")
    (root / "classnames.txt").write_text("".join(f"{i}_{w}\t{w}\n" for i, w in enumerate(WORDS)))
    return root


def tool(root: Path, model: str, templates, out: Path) -> tuple[dict, list[dict]]:
    spec = json.dumps(templates) if isinstance(templates, list) else templates
    command = [sys.executable, "-m", "clipdistill.cli", "eval", "method=zeroshot", "data.name=image_folder",
               f"data.root={root}", f"student.name={model}", "student.pretrained=null", "data.num_workers=0",
               f"zeroshot.templates={spec}", "logger.wandb.mode=disabled", "--out", str(out)]
    subprocess.run(command, check=True, env={**os.environ, "WANDB_MODE": "disabled"})
    with open(out / "predictions.csv") as handle:
        return json.loads((out / "metrics.json").read_text()), list(csv.DictReader(handle))


def by_hand(root: Path, bundle: Path, templates: list[str]) -> tuple[dict, list[str]]:
    import open_clip
    import torch
    from PIL import Image

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{bundle}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{bundle}")
    model.eval()
    folders = sorted(p.name for p in (root / "test").iterdir())
    names = dict(line.split("\t") for line in (root / "classnames.txt").read_text().splitlines())
    classnames = [names[f] for f in folders]
    with torch.no_grad():
        per_template = [torch.nn.functional.normalize(
            model.encode_text(tokenizer([t.replace("{c}", "{}").format(c) for c in classnames])).float(), dim=-1)
            for t in templates]
        text = per_template[0] if len(templates) == 1 else torch.nn.functional.normalize(
            torch.stack(per_template).mean(0), dim=-1)
        paths, labels, logits = [], [], []
        for label, folder in enumerate(folders):
            for path in sorted((root / "test" / folder).iterdir()):
                image = preprocess(Image.open(path)).unsqueeze(0)
                feature = torch.nn.functional.normalize(model.encode_image(image).float(), dim=-1)
                logits.append((model.logit_scale.exp() * feature @ text.t())[0].numpy())
                paths.append(str(path))
                labels.append(label)
    logits, labels = np.stack(logits), np.array(labels)
    top5 = np.argsort(-logits, axis=1, kind="stable")[:, :5]
    predicted = logits.argmax(1)
    recall = [float((predicted[labels == c] == c).mean()) for c in range(len(classnames))]
    metrics = {"test/acc": float((predicted == labels).mean()),
               "test/acc_top5": float((top5 == labels[:, None]).any(1).mean()),
               "test/mean_class_acc": float(np.mean(recall))}
    return metrics, [classnames[p] for p in predicted]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="synthetic-teacher")
    parser.add_argument("--out", type=Path, default=Path("runs/zeroshot-digits"))
    args = parser.parse_args()
    from clipcore.synthetic.models import resolve_synthetic
    from clipcore.templates import CIFAR18_TEMPLATES

    bundle = resolve_synthetic(args.model)
    root = write_digits(args.out / "digits")
    rows = ["| templates | route | top-1 | top-5 | mean per-class recall | predictions that differ |",
            "|---|---|---:|---:|---:|---:|"]
    for label, templates in SETTINGS.items():
        metrics, predictions = tool(root, args.model, templates, args.out / label.replace(" ", "-"))
        listed = list(CIFAR18_TEMPLATES) if templates == "cifar18" else templates
        hand, hand_predictions = by_hand(root, bundle, listed)
        differ = sum(r["prediction"] != p for r, p in zip(predictions, hand_predictions))
        for route, m in (("clipdistill eval", metrics), ("by hand (open_clip + numpy)", hand)):
            rows.append(f"| {label} | {route} | {100 * m['test/acc']:.2f} | {100 * m['test/acc_top5']:.2f} | "
                        f"{100 * m['test/mean_class_acc']:.2f} | {differ} of {len(predictions)} |")
    table = "\n".join(rows)
    (args.out / "comparison.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
