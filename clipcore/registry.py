"""Method registry: ``train.py`` and ``eval.py`` pick a method by the config's ``method`` key.

A method registers a builder ``build(cfg) -> (module, datamodule)``. Method packages register
on import (``import kdpl, gcd``); this module stays free of them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable
from clipcore.config import ConfigError

_METHODS: dict[str, "MethodEntry"] = {}


@dataclass(frozen=True)
class MethodEntry:
    name: str
    build: Callable
    module_class: type
    description: str = ""


def register_method(name: str, module_class: type, description: str = "") -> Callable:
    """Decorator for ``build(cfg) -> (LightningModule, LightningDataModule)``."""

    def decorator(build: Callable) -> Callable:
        if name in _METHODS and _METHODS[name].build is not build:
            raise ValueError(f"method {name!r} is already registered")
        _METHODS[name] = MethodEntry(name, build, module_class, description)
        return build

    return decorator


def get_method(name: str) -> MethodEntry:
    if name not in _METHODS:
        known = ", ".join(sorted(_METHODS)) or "(none registered)"
        raise ConfigError(f"unknown method {name!r} (config key 'method'). Registered methods: {known}")
    return _METHODS[name]


def list_methods() -> list[str]:
    return sorted(_METHODS)
