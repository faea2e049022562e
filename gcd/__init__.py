"""Generalized category discovery: spectral concept filtering, GCD losses, metrics and modules.

Importing the package is cheap. ``gcd.config`` registers the ``gcd`` config section (no torch);
``gcd.methods`` registers the GCD datasets and the methods ``spectralgcd`` and ``simgcd``.
"""
