#!/usr/bin/env python
"""Evaluate a checkpoint, an export or a zero-shot model; export a checkpoint
(see ``clipdistill/evaluate.py`` or ``python eval.py --help``)."""
import sys

from clipdistill.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
