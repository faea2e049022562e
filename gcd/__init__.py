"""Generalized category discovery: spectral concept filtering, GCD losses, metrics and modules.

Importing the package registers the GCD datasets, the ``gcd`` config section and the methods
``spectralgcd`` and ``simgcd``.
"""
from gcd import config as _config  # noqa: F401
from gcd import data as _data  # noqa: F401  (dataset registry)
from gcd import methods as _methods  # noqa: F401
