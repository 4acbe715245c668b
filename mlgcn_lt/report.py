"""Compatibility shim (the results table and figures of runs): the code lives in :mod:`mlgcn_lt.reporting.table`.

Kept so that ``python -m mlgcn_lt.report`` and imports from the old path keep working; new code imports
from :mod:`mlgcn_lt.reporting.table`.
"""

from mlgcn_lt.reporting.table import *  # noqa: F403
from mlgcn_lt.reporting.table import main

if __name__ == "__main__":
    raise SystemExit(main())
