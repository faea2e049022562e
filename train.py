#!/usr/bin/env python
"""Train any registered method (see ``clipdistill/train.py`` or ``python train.py --help``)."""
import sys

from clipdistill.train import main

if __name__ == "__main__":
    sys.exit(main())
