"""The protocol registry: ``@register_protocol`` on a ``Protocol`` subclass (one entry each)."""
from __future__ import annotations

from clipcore.config import ConfigError

PROTOCOLS: dict[str, type] = {}


def register_protocol(cls: type) -> type:
    if cls.name in PROTOCOLS and PROTOCOLS[cls.name] is not cls:
        raise ValueError(f"protocol {cls.name!r} is already registered")
    PROTOCOLS[cls.name] = cls
    return cls


def get_protocol(name: str):
    if name not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {name!r}: expected one of {', '.join(sorted(PROTOCOLS))}")
    return PROTOCOLS[name]()
