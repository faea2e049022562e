"""Prompt learning for frozen CLIP students and knowledge distillation from a CLIP teacher (KDPL).

Importing the package is cheap. ``kdpl.config`` registers the ``prompt`` / ``kdpl`` config
sections (no torch); ``kdpl.methods`` registers the CoOp datasets and the methods ``coop``,
``cocoop``, ``vpt``, ``maple`` and ``promptsrc``.
"""
