#!/usr/bin/env python
"""The offline demo (see ``clipdistill/demo.py`` or ``python demo.py --help``)."""
import sys

from clipdistill.demo import main

if __name__ == "__main__":
    sys.exit(main())
