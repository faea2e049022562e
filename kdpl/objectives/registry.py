"""Registry of objectives: one file in ``kdpl/objectives/`` with its config class and
``@register_objective(name, config=...)``; found by reading the files (``kdpl.config``)."""
from __future__ import annotations

import importlib

from clipcore.config import ConfigError
from kdpl.config import declared_objectives
from kdpl.objectives.base import Objective

OBJECTIVES: dict[str, type[Objective]] = {}


def register_objective(name: str, *, config: type):
    def wrap(cls: type[Objective]) -> type[Objective]:
        if name in OBJECTIVES and OBJECTIVES[name] is not cls:
            raise ValueError(f"objective '{name}' is already registered")
        cls.name = name
        cls.config_class = config
        OBJECTIVES[name] = cls
        return cls

    return wrap


def objective_class(name: str) -> type[Objective]:
    if name not in OBJECTIVES:
        declared = declared_objectives()
        if name not in declared:
            raise ConfigError(f"objective.name={name!r}: expected one of {', '.join(sorted(declared))}")
        importlib.import_module(declared[name].module)
    return OBJECTIVES[name]


def build_objective(settings, classnames: list[str], dataset_template: str) -> Objective:
    """The objective named by ``settings.name`` (the ``objective`` config section)."""
    return objective_class(settings.name)(settings, classnames, dataset_template)
