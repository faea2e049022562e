"""Helpers shared by the benchmarks: machine description, Markdown tables, scaled-down model
configs, class-name lists and a meta-device mode for counting FLOPs without computing."""
from __future__ import annotations

import contextlib
import copy
import os
import platform
import random
import string
from pathlib import Path
from unittest import mock

import open_clip
import torch

REPO = Path(__file__).resolve().parents[1]


def machine_description(device: torch.device) -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [f"CPU: {cpu}, {os.cpu_count()} cores ({torch.get_num_threads()} torch threads)"]
    try:
        parts.append("load average at start: " + " ".join(Path("/proc/loadavg").read_text().split()[:3]))
    except OSError:
        pass
    if device.type == "cuda":
        parts.append(f"GPU: {torch.cuda.get_device_name(device)}")
    parts.append(f"torch {torch.__version__}, open_clip {open_clip.__version__}, python {platform.python_version()}")
    return "; ".join(parts)


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def scaled_config(name: str, width_div: int, image_size: int, patch_size: int | None = None,
                  layers: int | None = None) -> dict:
    """open_clip config of `name` with the same depths and context length but every width (and
    head count) divided by `width_div`, at `image_size` px: a cheap stand-in with the same layout
    (prompt depths, token counts per prompt) for CPU runs. `layers` also cuts both towers' depth."""
    cfg = copy.deepcopy(open_clip.get_model_config(name))
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    if layers:
        vision["layers"] = text["layers"] = layers
    cfg["embed_dim"] //= width_div
    vision["width"] //= width_div
    vision["head_width"] = max(16, vision.get("head_width", 64) // width_div)
    vision["image_size"] = image_size
    if patch_size:
        vision["patch_size"] = patch_size
    text["width"] //= width_div
    text["heads"] = max(1, text.get("heads", 8) // width_div)
    return cfg


def random_names(n: int, seed: int = 0) -> list[str]:
    """`n` distinct pseudo class names of 1-3 lowercase words (token lengths vary like real ones)."""
    rng, names = random.Random(seed), set()
    while len(names) < n:
        words = rng.choices([1, 1, 2, 2, 3], k=1)[0]
        names.add(" ".join("".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 9)))
                           for _ in range(words)))
    return sorted(names)


def class_lists(n_classes: int, dict_size: int, seed: int = 0) -> tuple[list[str], list[str], str]:
    """(dataset classes, dictionary, source). Real ImageNet names and the 20,930-name KDPL-CA
    dictionary when $CLIPCORE_ASSETS_DIR has them (a seeded subset when fewer are asked for),
    else random strings."""
    if os.environ.get("CLIPCORE_ASSETS_DIR"):
        from clipcore.assets import asset_path, read_class_list_txt, read_dictionary_csv

        classes = read_class_list_txt(asset_path("spectralgcd/imagenet_classes.txt", download=False))
        dictionary = read_dictionary_csv(asset_path("spectralgcd/openimages_dictionary.csv", download=False))
        rng = random.Random(seed)
        classes = classes if n_classes >= len(classes) else rng.sample(classes, n_classes)
        dictionary = dictionary if dict_size >= len(dictionary) else rng.sample(dictionary, dict_size)
        return classes, dictionary, "real (ImageNet names, KDPL-CA dictionary)"
    return random_names(n_classes, seed), random_names(dict_size, seed + 1), "random strings"


@contextlib.contextmanager
def meta_mode(backbones):
    """Let learners and backbones run on the meta device (FLOP counting, no compute).

    Truncation lengths of the teacher's text (`int(eot.max())` in `encode_text_embeddings`) need
    concrete values: integer class buffers (token ids, EOT positions) are kept on the CPU and
    the truncation length is taken from the CPU EOT positions before the text tower is called.
    (The learners' own steps read nothing from the device, see `test_prompts.py`.) Patches are
    undone on exit.
    """
    from kdpl.prompts import base

    def set_buffer(self, name, value):
        keep_cpu = value.device.type == "cpu" and not value.is_floating_point()
        self.register_buffer(name, value if keep_cpu else value.to(self._device()), persistent=False)

    def wrap(backbone):
        encode = backbone.encode_text_embeddings

        def encode_text_embeddings(embeddings, eot_index, *, hook=None, truncate=True, normalize=False, deltas=None):
            if truncate:
                embeddings = embeddings[:, : int(eot_index.max()) + 1]
            return encode(embeddings, eot_index, hook=hook, truncate=False, normalize=normalize, deltas=deltas)
        return encode_text_embeddings

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(base.PromptLearner, "_set_buffer", set_buffer))
        for backbone in backbones:
            stack.enter_context(mock.patch.object(backbone, "encode_text_embeddings", wrap(backbone)))
        yield
