"""Method registry: ``train.py`` and ``eval.py`` pick a method by the config's ``method`` key.

A method registers a builder ``build(cfg) -> (module, datamodule)``. Method packages register
on import (``kdpl.methods``, ``gcd.methods``); this module stays free of them.
"""
from __future__ import annotations

from typing import Callable

from clipcore.config import ConfigError

_METHODS: dict[str, Callable] = {}


def register_method(name: str) -> Callable:
    """Decorator for ``build(cfg) -> (LightningModule, LightningDataModule)``."""

    def decorator(build: Callable) -> Callable:
        if name in _METHODS and _METHODS[name] is not build:
            raise ValueError(f"method {name!r} is already registered")
        _METHODS[name] = build
        return build

    return decorator


def build_method(cfg):
    """The module and datamodule of ``cfg.method``."""
    return method_builder(cfg.method)(cfg)


def method_builder(name: str) -> Callable:
    if name not in _METHODS:
        known = ", ".join(sorted(_METHODS)) or "(none registered)"
        raise ConfigError(f"unknown method {name!r} (config key 'method'). Registered methods: {known}")
    return _METHODS[name]


def list_methods() -> list[str]:
    return sorted(_METHODS)
