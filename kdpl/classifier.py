"""Baked text classifiers: what a text-only prompt learner (CoOp) learned, for a class list, as a
plain ``[C, D]`` matrix that open_clip alone can use.

A folder with ``classifier.safetensors`` (``classifier``: the L2-normalised fp32 text features,
one row per class) and ``classifier.json`` (the class names in row order, ``logit_scale`` =
``exp`` of the model's, and ``open_clip``: the ``model_name`` / ``pretrained`` that
``open_clip.create_model_and_transforms`` loads the student from, or null for a model built
from a bare architecture config). The logits of an image are
``logit_scale * normalize(model.encode_image(x)) @ classifier.T``: exactly the learner's logits,
since a text-only learner leaves the image tower untouched.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from clipcore.config import ConfigError, to_plain
from clipcore.errors import UserError
from clipcore.export import write_export
from clipcore.module import check_fingerprints

CLASSIFIER_TENSORS = "classifier.safetensors"
CLASSIFIER_JSON = "classifier.json"


def read_class_list(path: Path) -> list[str]:
    """One class name per line, or ``folder<TAB>name`` lines (an image_folder classnames.txt)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--classes {path}: no such file (expected one class name per line)")
    names = [line.split("\t", 1)[-1].strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise UserError(f"--classes {path} lists no classes (expected one class name per line)")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"--classes {path} lists {', '.join(map(repr, repeated[:5]))} more than once")
    return names


def bake_classifier(cfg, learned: Mapping[str, torch.Tensor], stored_fingerprints: Mapping[str, str],
                    classnames: list[str]) -> tuple[torch.Tensor, dict]:
    """The ``[C, D]`` classifier of ``classnames`` for the run ``cfg`` with learner tensors ``learned``."""
    from clipcore.build import backbone_from_config
    from kdpl.prompts.registry import build_prompt_learner, learner_class

    if not learner_class(cfg.method).text_only:
        raise ConfigError(f"method {cfg.method!r} prompts the image tower or conditions its prompts on the image, "
                          f"so no fixed text classifier reproduces it; baking works for text-only learners "
                          f"(coop). Use the export folder with `clipdistill eval --export` instead.")
    student = backbone_from_config(cfg.student).freeze().eval()
    check_fingerprints({k: v for k, v in stored_fingerprints.items() if k == "student"},
                       {"student": student.fingerprint()})
    learner = build_prompt_learner(cfg.method, student, classnames, to_plain(cfg.prompt))
    try:
        learner.load_learned_state(dict(learned))
    except (KeyError, ValueError) as exc:
        raise UserError(f"the learned prompts do not fit this class list: {exc}") from exc
    classifier = learner.class_text_classifier()
    source = student.open_clip_source
    metadata = {
        "classnames": list(classnames),
        "logit_scale": float(student.logit_scale.detach().float().exp()),
        "open_clip": {"model_name": source[0], "pretrained": source[1]} if source else None,
        "learner": cfg.method,
        "student": to_plain(cfg.student),
        "student_fingerprint": student.fingerprint(),
        "embed_dim": int(classifier.shape[1]),
    }
    return classifier, metadata


def write_classifier(directory: Path, classifier: torch.Tensor, metadata: dict) -> Path:
    return write_export(directory, {"classifier": classifier}, metadata,
                        weights_file=CLASSIFIER_TENSORS, metadata_file=CLASSIFIER_JSON)
