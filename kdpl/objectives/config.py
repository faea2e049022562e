"""Config fields shared by the distillation objectives (light: see ``clipcore.declarations``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class DistillationConfig:
    """KDPL's symmetric KL to a frozen teacher (kdpl spec 2.2): alpha * KL(p_T||p_S) + beta * KL(p_S||p_T)."""

    alpha: float = 0.5
    beta: float = 0.5
    # Teacher prompt template; None: the dataset's template.
    teacher_template: Optional[str] = None
    # student (the reference: the teacher's logits use the student's logit scale) | teacher.
    teacher_logit_scale: str = "student"
    # Folder of cached teacher text features (default: <cache root>/text_features).
    text_cache_dir: Optional[str] = None
