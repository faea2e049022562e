"""Offline demo world: procedural ShapeWorld images and small CLIPs pretrained on them.

Heavy pieces (pretraining, the model cache) are imported lazily so that ``import
clipcore.synthetic`` stays cheap for code that only renders images or writes layouts.
"""
from clipcore.synthetic.layouts import write_coop_layout, write_gcd_layout
from clipcore.synthetic.vocab import ATTRIBUTE_WORDS, DISTRACTOR_WORDS, demo_dictionary
from clipcore.synthetic.world import ShapeWorld

__all__ = ["ShapeWorld", "write_coop_layout", "write_gcd_layout", "demo_dictionary",
           "ATTRIBUTE_WORDS", "DISTRACTOR_WORDS", "resolve_synthetic", "SYNTHETIC_MODELS"]


def __getattr__(name):
    if name in ("resolve_synthetic", "SYNTHETIC_MODELS"):
        from clipcore.synthetic import models

        return getattr(models, name)
    raise AttributeError(f"module 'clipcore.synthetic' has no attribute {name!r}")
