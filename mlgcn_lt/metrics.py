"""Compatibility shim (multi-label metrics): the code lives in :mod:`mlgcn_lt.evaluation.metrics`.

Kept so that imports from the old path (``mlgcn_lt.metrics.compute_metrics``) keep working; new code imports
from :mod:`mlgcn_lt.evaluation.metrics`.
"""

from mlgcn_lt.evaluation.metrics import *  # noqa: F403
from mlgcn_lt.evaluation.metrics import MultilabelMetrics, compute_metrics

__all__ = ["MultilabelMetrics", "compute_metrics"]
