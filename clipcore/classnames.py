"""Class names as prompts spell them (light: no torch)."""
from __future__ import annotations

from clipcore.templates import fill


def readable_classname(name: str) -> str:
    """Underscores of folder-style names become spaces (the CoOp and SimGCD convention)."""
    return name.replace("_", " ")


def prompts_for(template: str, classnames: list[str]) -> list[str]:
    """``template`` filled with each readable class name (placeholder ``{}`` or ``{c}``)."""
    return [fill(template, readable_classname(c)) for c in classnames]
