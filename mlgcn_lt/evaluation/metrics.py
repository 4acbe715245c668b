"""Multi-label metrics: per-class AP / AUC / F1, their macro means, and head / middle / tail mAP.

:func:`compute_metrics` is the one definition; :class:`MultilabelMetrics` (torchmetrics) gathers a whole split's
predictions across processes and calls it, so the training loop and offline evaluation cannot disagree.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torchmetrics
from torchmetrics.functional.classification import binary_auroc, binary_average_precision

GROUPS = ("head", "middle", "tail")


def _as_tensor(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64)
    return torch.from_numpy(np.array(x, dtype=np.float64, copy=True))


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else float("nan")


def compute_metrics(
    probs,
    targets,
    class_names: Sequence[str],
    groups: Mapping[str, str] | None = None,
    threshold: float | Sequence[float] | np.ndarray = 0.5,
) -> dict[str, float]:
    """Flat dict of metrics for (N, C) probabilities and targets (1 / 0 / NaN = unknown, ignored per class).

    AP is the standard non-interpolated average precision, AUC the ROC AUC. A class without positives has no AP,
    AUC or F1 (NaN) and a class without negatives no AUC: they are left out of the means, and counted in
    ``n_classes_without_positives``. ``threshold`` (scalar or one per class) binarises for F1.
    """
    p, t = _as_tensor(probs), _as_tensor(targets)
    if p.ndim != 2 or p.shape != t.shape or p.shape[1] != len(class_names):
        raise ValueError(f"probs {tuple(p.shape)} and targets {tuple(t.shape)} must both be (N, {len(class_names)})")
    thr = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (len(class_names),))
    out: dict[str, float] = {}
    ap, auc, f1 = {}, {}, {}
    without_pos = 0
    for c, name in enumerate(class_names):
        known = ~torch.isnan(t[:, c])
        pc, yc = p[known, c], t[known, c].long()
        n_pos = int(yc.sum())
        n_neg = int(len(yc) - n_pos)
        if n_pos == 0:
            without_pos += 1
            ap[name] = auc[name] = f1[name] = float("nan")
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            ap[name] = float(binary_average_precision(pc, yc))
            auc[name] = float(binary_auroc(pc, yc)) if n_neg > 0 else float("nan")
        pred = pc >= thr[c]
        tp = int((pred & (yc == 1)).sum())
        f1[name] = 2.0 * tp / (int(pred.sum()) + n_pos)
    out["mAP"] = _nanmean(list(ap.values()))
    out["mAUC"] = _nanmean(list(auc.values()))
    out["mF1"] = _nanmean(list(f1.values()))
    if groups is not None:
        unknown = [c for c in class_names if c not in groups]
        if unknown:
            raise KeyError(f"groups has no entry for classes {unknown}")
        for g in GROUPS:
            out[f"mAP_{g}"] = _nanmean([ap[c] for c in class_names if groups[c] == g])
    out["n_classes_without_positives"] = float(without_pos)
    for name in class_names:
        out[f"AP/{name}"] = ap[name]
        out[f"AUC/{name}"] = auc[name]
        out[f"F1/{name}"] = f1[name]
    return out


class MultilabelMetrics(torchmetrics.Metric):
    """Collects probabilities, targets and dataset indices of a split (synced across DDP ranks) → compute_metrics.

    Rows that share a dataset index (the padding a distributed sampler adds) are counted once.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(
        self, class_names: Sequence[str], groups: Mapping[str, str] | None = None, threshold: float = 0.5
    ) -> None:
        super().__init__(compute_with_cache=True)
        self.class_names = list(class_names)
        self.groups = dict(groups) if groups is not None else None
        self.threshold = threshold
        self.add_state("probs", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")
        self.add_state("indices", default=[], dist_reduce_fx="cat")

    def update(self, probs: torch.Tensor, targets: torch.Tensor, indices: torch.Tensor | None = None) -> None:
        self.probs.append(probs.detach().float())
        self.targets.append(targets.detach().float())
        if indices is None:  # no dataset index: every row is its own sample (offset by rank so ranks never collide)
            rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
            start = sum(len(x) for x in self.indices) + (rank << 40)
            indices = torch.arange(start, start + len(probs), device=probs.device)
        self.indices.append(indices.detach().long())

    def gathered(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(probs, targets, indices) of the whole split, one row per dataset index, sorted by index."""
        cat = torchmetrics.utilities.dim_zero_cat
        probs, targets, idx = cat(self.probs), cat(self.targets), cat(self.indices)
        uniq, first = np.unique(idx.cpu().numpy(), return_index=True)
        keep = torch.as_tensor(first, device=probs.device)
        return probs[keep], targets[keep], torch.as_tensor(uniq)

    def compute(self) -> dict[str, float]:
        probs, targets, indices = self.gathered()
        #: The whole split's (probs, targets, dataset indices) of the last compute, for predictions files.
        self.last = (probs.cpu().numpy(), targets.cpu().numpy(), indices.cpu().numpy())
        return compute_metrics(probs, targets, self.class_names, self.groups, self.threshold)
