"""Compatibility shim (challenge submission files): the code lives in :mod:`mlgcn_lt.evaluation.submit`.

Kept so that ``python -m mlgcn_lt.submit`` and imports from the old path keep working; new code imports
from :mod:`mlgcn_lt.evaluation.submit`.
"""

from mlgcn_lt.evaluation.submit import *  # noqa: F403
from mlgcn_lt.evaluation.submit import main

if __name__ == "__main__":
    raise SystemExit(main())
