"""What every command needs: the config schema (light) and the registered methods (heavy).

The schema's sections come from modules that import nothing but dataclasses and omegaconf, so
a config mistake is reported in a fraction of a second; the methods (torch, open_clip,
Lightning) are imported only once the config is known to be valid.
"""
from __future__ import annotations

from pathlib import Path

# The shipped configs are package data: `-c trainer/cpu.yaml` finds them from any directory.
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def register_config_sections() -> None:
    """The method families' config (no torch): zero-shot is the core's; the prompt learners
    (``prompt``, ``objective``) and GCD (``gcd``) register theirs."""
    import gcd.config  # noqa: F401
    import kdpl.config  # noqa: F401
    from clipcore.config import register_config_dir

    register_config_dir(CONFIG_DIR)


def register_methods() -> None:
    """Every method and dataset: zero-shot, the prompt learners, SpectralGCD / SimGCD, and the
    offline demo's ShapeWorld dataset and synthetic-* models."""
    register_config_sections()
    import clipcore.synthetic.dataset  # noqa: F401
    import clipcore.synthetic.models  # noqa: F401
    import clipcore.zeroshot  # noqa: F401
    import gcd.methods  # noqa: F401
    import kdpl.methods  # noqa: F401


def load_run_config(files, overrides):
    """The validated config of ``-c`` files and ``key=value`` overrides (ConfigError otherwise)."""
    from clipcore.config import load_config

    register_config_sections()
    return load_config(files, overrides)
