"""Evaluation protocols as registered objects sharing one runner and one aggregator.

``b2n``, ``xd``, ``dg`` (kdpl spec §4) and ``gcd`` (SpectralGCD's All / Old / New tables). Run one
with ``python -m clipdistill.protocols <name> ...``; see ``clipdistill.protocols.runner`` for
where the cells train (in this process, on local devices, on SLURM, or printed for a scheduler).
A new protocol is one ``Protocol`` subclass with ``@register_protocol``, imported here.
"""
from clipdistill.protocols import gcd_protocol, kdpl_protocols  # noqa: F401  (register the protocols)
from clipdistill.protocols.registry import PROTOCOLS, get_protocol, register_protocol
from clipdistill.protocols.runner import Execution, rebuild_tables, run_protocol

__all__ = ["PROTOCOLS", "Execution", "get_protocol", "rebuild_tables", "register_protocol", "run_protocol"]
