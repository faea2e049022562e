"""Prompt learning for frozen CLIP students and knowledge distillation from a CLIP teacher (KDPL).

Importing the package registers the CoOp datasets, the ``prompt``/``kdpl`` config sections and
the methods ``coop``, ``cocoop``, ``vpt``, ``maple`` and ``promptsrc``.
"""
from kdpl import config as _config  # noqa: F401
from kdpl import datasets as _datasets  # noqa: F401
from kdpl import methods as _methods  # noqa: F401
