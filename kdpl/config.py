"""Config sections owned by kdpl: ``prompt`` (learner hyper-parameters) and ``kdpl`` (objective)."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Mapping, Optional

from clipcore.config import ConfigError, register_config_section

OBJECTIVES = ("supervised", "kdpl", "kdpl_ca")


@dataclass
class PromptConfig:
    """Hyper-parameters of every prompt learner; `None` means "the learner's default" (§1.6).

    `n_ctx` is the number of *text* context tokens (CoOp/CoCoOp: `None` = token count of
    `ctx_init`; MaPLe 2; PromptSRC 4). `depth` is the deep-prompt depth (VPT 12, MaPLe 9,
    PromptSRC 9 / 3 cross-dataset); PromptSRC may set `text_depth`/`vision_depth` separately.
    Precision is not a field: learned tensors are fp32 and the caller chooses the autocast.
    """

    n_ctx: Optional[int] = None
    ctx_init: Optional[str] = "a photo of a"
    class_token_position: str = "end"  # CoOp only: end | middle | front
    class_specific: bool = False  # CoOp CSC: one context per class
    depth: Optional[int] = None
    text_depth: Optional[int] = None
    vision_depth: Optional[int] = None
    vision_ctx: Optional[int] = None
    init_std: float = 0.02
    template: str = "a photo of a {}."  # hand-crafted text of VPT and of the zero-shot checks
    meta_net_ratio: int = 16  # CoCoOp hidden width = embed_dim // ratio
    text_chunk_size: int = 1024  # prompts per text-tower call when encoding many at once
    scl_text_weight: float = 25.0
    scl_image_weight: float = 10.0
    scl_logits_weight: float = 1.0
    gpa_mean: Optional[float] = None
    gpa_std: Optional[float] = None

    @classmethod
    def from_any(cls, cfg: "PromptConfig | Mapping[str, Any] | None") -> "PromptConfig":
        if cfg is None:
            return cls()
        if isinstance(cfg, PromptConfig):
            return cfg
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ConfigError(f"Unknown prompt config keys {unknown}; expected some of {sorted(known)}")
        return cls(**dict(cfg))

    def with_defaults(self, defaults: Mapping[str, Any]) -> "PromptConfig":
        """Fill the fields left at `None` from a learner's defaults."""
        return replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})


@dataclass
class KDPLSection:
    # supervised (cross-entropy) | kdpl (symmetric KL to the teacher) | kdpl_ca (class-agnostic).
    objective: str = "supervised"
    alpha: float = 0.5
    beta: float = 0.5
    # Classes distilled per step in the class-agnostic form (top-K of the teacher's mean softmax).
    k_max: int = 1000
    # Class-agnostic dictionary: an asset name (see `python -m clipcore.assets list`) or a CSV path.
    dictionary: str = "spectralgcd/openimages_dictionary.csv"
    # Teacher prompt template; None: the dataset's template ("a photo of a {}." for KDPL-CA).
    teacher_template: Optional[str] = None
    # student (reference: the teacher's logits use the student's logit scale) | teacher.
    teacher_logit_scale: str = "student"
    # Folder of cached teacher text features (default: <cache>/text_features).
    text_cache_dir: Optional[str] = None


# The learners' own dataclass is the schema of the ``prompt`` section: one source of truth.
register_config_section("prompt", PromptConfig)
register_config_section("kdpl", KDPLSection)
