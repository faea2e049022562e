"""A prompt learner trained by this framework, loaded from its export as a frozen teacher
(PromptKD's teacher: e.g. PromptSRC on a ViT-L/14, trained on the base classes).

Only the learner is rebuilt (its backbone from the export's ``student`` section, its learned
tensors from the export): the teacher run's dataset is not read, and the learner is built for
the class list it will score. Learners with class-specific tensors cannot change class list and
are refused by ``load_learned_state`` with the reason.
"""
from __future__ import annotations

from pathlib import Path

from clipcore.build import backbone_from_config
from clipcore.config import from_plain
from clipcore.export import read_export
from clipcore.module import check_fingerprints
from kdpl.prompts.registry import build_prompt_learner
from kdpl.settings import learner_settings

PREFIX = "learner."


def load_prompt_teacher(directory: str | Path, classnames: list[str]):
    """The frozen learner of the export in ``directory``, scoring ``classnames``."""
    tensors, metadata = read_export(directory)
    if "learner" not in metadata:
        raise ValueError(f"{directory}: export of method {metadata.get('method')!r} holds no prompt learner; "
                         f"expected the export of a prompt-learning run (coop, promptsrc, ...)")
    cfg = from_plain(metadata["config"])
    backbone = backbone_from_config(cfg.student).freeze()
    stored = {k: v for k, v in metadata.get("backbone_fingerprints", {}).items() if k == "student"}
    check_fingerprints(stored, {"student": backbone.fingerprint()})
    learner = build_prompt_learner(metadata["learner"], backbone, list(classnames), learner_settings(cfg))
    learner.load_learned_state({k[len(PREFIX):]: v for k, v in tensors.items() if k.startswith(PREFIX)})
    for p in learner.parameters():
        p.requires_grad_(False)
    return learner.eval()
