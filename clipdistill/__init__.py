"""The application layer: command-line entry points over ``clipcore``, ``kdpl`` and ``gcd``.

Imports point one way: ``clipdistill`` -> ``kdpl``, ``gcd`` -> ``clipcore``.
"""
