"""Merged exports: a learner whose learned tensors are weight changes (CLIP-LoRA) written as a
plain open_clip model, the changes added to a copy of the frozen student."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from clipcore.config import ConfigError
from clipcore.errors import UserError


def merged_bundle(cfg, learned: Mapping[str, torch.Tensor], stored_fingerprints: Mapping[str, str], out: Path) -> Path:
    from clipcore.build import backbone_from_config
    from clipcore.bundle import save_local_dir
    from clipcore.config import to_plain
    from clipcore.module import check_fingerprints
    from kdpl.prompts.registry import build_prompt_learner, learner_class

    if not hasattr(learner_class(cfg.method), "weight_changes"):
        raise ConfigError(f"method {cfg.method!r} learns prompts, not weight changes: there is nothing to merge "
                          f"(--merged is for clip_lora; prompt learners export with --classes or as they are)")
    student = backbone_from_config(cfg.student).freeze().eval()
    check_fingerprints({k: v for k, v in stored_fingerprints.items() if k == "student"},
                       {"student": student.fingerprint()})
    learner = build_prompt_learner(cfg.method, student, ["class"], to_plain(cfg.prompt))
    try:
        learner.load_learned_state(dict(learned))
    except (KeyError, ValueError) as exc:
        raise UserError(f"the learned tensors do not fit this configuration: {exc}") from exc
    model = student.merged_copy(learner.weight_changes())
    return save_local_dir(model, student.model_cfg, out)
