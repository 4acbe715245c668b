"""Compatibility shim (reading offline W&B runs): the code lives in :mod:`mlgcn_lt.training.loggers.wandb_offline`.

Kept so that ``python -m mlgcn_lt.wandb_offline`` and imports from the old path keep working; new code imports
from :mod:`mlgcn_lt.training.loggers.wandb_offline`.
"""

from mlgcn_lt.training.loggers.wandb_offline import *  # noqa: F403
from mlgcn_lt.training.loggers.wandb_offline import main

if __name__ == "__main__":
    raise SystemExit(main())
