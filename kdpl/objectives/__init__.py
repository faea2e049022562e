"""Training objectives of the prompt learners: one file per objective (``supervised``, ``kdpl``,
``kdpl_ca``, ``upl``, ``promptkd``), found by ``kdpl.objectives.registry`` without any list
being edited.

Names are imported on first use (``kdpl.objectives.config`` stays light).
"""
import importlib

_EXPORTS = {"Objective": "kdpl.objectives.base", "ObjectiveResult": "kdpl.objectives.base",
            "TrainingStep": "kdpl.objectives.base", "register_objective": "kdpl.objectives.registry",
            "build_objective": "kdpl.objectives.registry", "objective_class": "kdpl.objectives.registry"}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'kdpl.objectives' has no attribute {name!r}")
