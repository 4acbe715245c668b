"""``python -m mlgcn_lt.explain``: see :mod:`mlgcn_lt.explain.cli`."""

import sys

from mlgcn_lt.explain.cli import main

if __name__ == "__main__":
    sys.exit(main())
