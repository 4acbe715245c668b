"""Compatibility shim (importing the released checkpoint): the code lives in :mod:`mlgcn_lt.evaluation.import_release`.

Kept so that ``python -m mlgcn_lt.import_release`` and imports from the old path keep working; new code imports
from :mod:`mlgcn_lt.evaluation.import_release`.
"""

from mlgcn_lt.evaluation.import_release import *  # noqa: F403
from mlgcn_lt.evaluation.import_release import main

if __name__ == "__main__":
    raise SystemExit(main())
