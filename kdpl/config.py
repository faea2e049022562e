"""The prompt-learning method family (light: no torch).

Every prompt learner is a method (``method: coop``); it reads two sections besides the core ones:

- ``prompt``: the learner's own config class, declared in its file in ``kdpl/prompts/``;
- ``objective``: the config class of the objective named by ``objective.name`` (``supervised``,
  ``kdpl``, ``kdpl_ca``, ...), declared in its file in ``kdpl/objectives/``.

Both are read from the source files without importing them (``clipcore.declarations``), so
a new learner or objective is one file, found without any list being edited.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Optional

from clipcore.config_schema import ClassificationData, MethodFamily, register_method_family
from clipcore.declarations import Declaration, find_declarations
from clipcore.errors import ConfigError

DEFAULT_OBJECTIVE = "supervised"


@dataclass
class TPTConfig:
    """Test-time prompt tuning at evaluation (``kdpl.tpt``; defaults: azshue/TPT,
    tpt_classification.py's arguments)."""

    value_ranges: ClassVar[dict] = {"views": (1, None, True), "selection": (0, 1, False),
                                    "steps": (0, None, True), "lr": (0, None, True)}

    enabled: bool = False
    views: int = 64            # -b 64: the original image and 63 augmented views
    selection: float = 0.1     # --selection_p: the most confident 10% of the views
    steps: int = 1             # --tta_steps
    lr: float = 5.0e-3         # --lr (AdamW)
    # AugMix in the augmented views; null: as the reference (not for ImageNet and its variants).
    augmix: Optional[bool] = None


def declared_learners() -> dict[str, Declaration]:
    return find_declarations("kdpl.prompts", "register_prompt_learner")


def declared_objectives() -> dict[str, Declaration]:
    return find_declarations("kdpl.objectives", "register_objective")


def objective_name(raw: Mapping) -> str:
    section = raw.get("objective") if isinstance(raw, Mapping) else None
    name = section.get("name", DEFAULT_OBJECTIVE) if isinstance(section, Mapping) else DEFAULT_OBJECTIVE
    return str(name)


def _sections(method: str, raw: Mapping) -> dict[str, type]:
    name = objective_name(raw)
    objectives = declared_objectives()
    if name not in objectives:
        raise ConfigError(f"objective.name={name!r}: expected one of {', '.join(sorted(objectives))}")
    return {"prompt": declared_learners()[method].config, "objective": objectives[name].config, "tpt": TPTConfig}


def _upgrade(plain: dict) -> dict:
    """Before the objectives became classes, their settings lived in ``kdpl`` (``kdpl.objective``
    named the objective) and every learner's fields in one flat ``prompt`` section."""
    if isinstance(plain.get("kdpl"), dict):
        old = plain.pop("kdpl")
        name = old.get("objective", DEFAULT_OBJECTIVE)
        fields_of = declared_objectives()[name].config.__dataclass_fields__
        plain["objective"] = {"name": name, **{k: v for k, v in old.items() if k in fields_of and k != "name"}}
    method = plain.get("method")
    if isinstance(plain.get("prompt"), dict) and method in declared_learners():
        fields_of = declared_learners()[method].config.__dataclass_fields__
        plain["prompt"] = {k: v for k, v in plain["prompt"].items() if k in fields_of}
    return plain


register_method_family(MethodFamily(
    "prompt", methods=lambda: sorted(declared_learners()), data=ClassificationData, sections=_sections,
    variants=lambda method: [{"objective": {"name": name}} for name in sorted(declared_objectives())],
    upgrade=_upgrade))
