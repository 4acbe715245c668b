"""ReportOutputs: the best epoch's validation metrics and predictions, and the files of the report splits.

docs/protocol.md: ``val`` chooses the checkpoint and tunes the F1 thresholds; the report splits (``dev``, ``test``)
are scored once with the chosen checkpoint. This callback keeps what that needs and writes the run's outputs:
``thresholds.json`` when testing starts, and per tested split ``per_class_<split>.csv`` and
``predictions_<split>.csv`` (a split without labels: ``predictions_<split>.csv`` and ``submission_<split>.csv``).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.trainer.states import TrainerFn

from mlgcn_lt.data.tables import ImageTable
from mlgcn_lt.evaluation.outputs import predictions_frame, write_csv, write_split_outputs
from mlgcn_lt.evaluation.submit import SubmissionError, save_submission
from mlgcn_lt.evaluation.thresholds import save_thresholds, tune_thresholds, tuned_f1_metrics

log = logging.getLogger(__name__)

Outputs = tuple[np.ndarray, np.ndarray, np.ndarray]  # probs (N, C), targets (N, C), dataset indices (N,)


class ReportOutputs(L.Callback):
    """The chosen weights' validation results, and the outputs of every report split tested with them.

    Chosen weights: during fitting, the epoch with the best ``monitor`` value (``ModelCheckpoint``'s rule: the first
    epoch wins ties, so they match the best checkpoint); a later ``trainer.validate()`` (e.g. of SWA's averaged
    model) replaces them. Kept: their ``val/*`` metrics (:attr:`best`, for ``metrics.json``), :attr:`best_epoch`
    (``None`` after ``validate()``) and validation predictions, all in the callback's checkpointed state: a run
    resumed after its best epoch tunes the same thresholds without validating again (~6 MB for CXR-LT's val split).

    Testing (``trainer.test``, once per report split: the module's ``report_split``, table from the fitted
    datamodule): the F1 thresholds are tuned on those predictions and written to ``<output_dir>/thresholds.json``;
    each split's files are written at its end and its ``<split>/mF1_tuned`` kept in :attr:`scores`. Without
    ``output_dir`` nothing is written.
    """

    def __init__(
        self,
        output_dir: str | None = None,
        monitor: str = "val/mAP",
        mode: Literal["max", "min"] = "max",
        prefix: str = "val/",
    ) -> None:
        self.output_dir = Path(output_dir) if output_dir else None
        self.monitor, self.mode, self.prefix = monitor, mode, prefix
        self.best: dict[str, float] = {}
        self.best_epoch: int | None = None
        self.best_outputs: Outputs | None = None
        self.thresholds: np.ndarray | None = None  # tuned on best_outputs at the first test after they changed
        self.scores: dict[str, float] = {}  # <split>/mF1_tuned of each labelled report split tested
        self._take_state = True  # whether load_state_dict applies (only when a fit resumes)

    # ------------------------------------------------------------------ the chosen weights' validation
    def _better(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.monitor not in self.best:
            return True
        old = self.best[self.monitor]
        return value > old if self.mode == "max" else value < old

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        if trainer.state.fn == TrainerFn.FITTING:
            if self.monitor not in metrics or not self._better(float(metrics[self.monitor])):
                return
            epoch: int | None = trainer.current_epoch
        elif trainer.state.fn == TrainerFn.VALIDATING:
            epoch = None  # the weights validate() was given are the ones to test
        else:
            return
        self.best = {k: float(v) for k, v in metrics.items() if k.startswith(self.prefix)}
        self.best_epoch = epoch
        self.best_outputs = getattr(getattr(pl_module, "val_metrics", None), "last", None)
        self.thresholds = None

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"best": self.best, "best_epoch": self.best_epoch}
        if self.best_outputs is not None:
            probs, targets, indices = self.best_outputs
            state["outputs"] = {
                "probs": torch.as_tensor(np.asarray(probs, dtype=np.float32)),
                "targets": torch.as_tensor(np.asarray(targets, dtype=np.float32)),
                "indices": torch.as_tensor(np.asarray(indices, dtype=np.int64)),
            }  # tensors: the checkpoint loads with weights_only=True
        return state

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # Lightning restores callback states also for validate() / test() of a checkpoint; only a resumed fit takes
        # them: the weights being tested were chosen after that checkpoint was written (e.g. SWA's validation).
        self._take_state = trainer.state.fn == TrainerFn.FITTING
        states = checkpoint.get("callbacks") or {}
        if self._take_state and self.state_key not in states and "BestMetrics" in states:
            # a run started before this callback (BestMetrics): its best epoch, without the predictions
            self.load_state_dict(states["BestMetrics"])

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not self._take_state:
            return
        self.best = dict(state_dict.get("best", {}))
        self.best_epoch = state_dict.get("best_epoch")
        outputs = state_dict.get("outputs")
        self.best_outputs = (
            None if outputs is None else tuple(outputs[k].numpy() for k in ("probs", "targets", "indices"))
        )
        self.thresholds = None

    # ------------------------------------------------------------------ report splits
    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.output_dir is None or self.thresholds is not None:
            return
        outputs = self.best_outputs
        if outputs is None:
            outputs = getattr(getattr(pl_module, "val_metrics", None), "last", None)
            if outputs is None:
                log.warning("no validation predictions: no F1 thresholds tuned (no thresholds.json)")
                return
            log.warning("no best-epoch validation predictions: F1 thresholds tuned on the last validation")
        probs, targets, _ = outputs
        self.thresholds = tune_thresholds(probs, targets)
        if trainer.is_global_zero:
            path = self.output_dir / "thresholds.json"
            save_thresholds(path, pl_module.classes, self.thresholds, f"val split, checkpoint {trainer.ckpt_path}")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.output_dir is None or trainer.datamodule is None:
            return
        split, labelled = pl_module.report_split, pl_module.report_labelled
        probs, targets, indices = pl_module.test_metrics.last
        table: ImageTable = trainer.datamodule.tables[split]
        if not labelled:
            if trainer.is_global_zero:
                self._predictions_only(split, table, (probs, targets, indices), trainer.datamodule.format)
            return
        values = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(f"{split}/")}
        tuned = {}
        if self.thresholds is not None:
            tuned = {
                f"{split}/{k}": v
                for k, v in tuned_f1_metrics(probs, targets, pl_module.classes, self.thresholds).items()
            }
            self.scores[f"{split}/mF1_tuned"] = tuned[f"{split}/mF1_tuned"]
        if trainer.is_global_zero:
            outputs = (probs, targets, indices)
            write_split_outputs(
                self.output_dir, split, {**values, **tuned}, pl_module.stats, table, outputs, self.thresholds
            )

    def _predictions_only(self, split: str, table: ImageTable, outputs: Outputs, fmt: str) -> None:
        """A split without labels: ``predictions_<split>.csv`` and ``submission_<split>.csv``, no metrics."""
        probs, _, indices = outputs
        write_csv(self.output_dir / f"predictions_{split}.csv", predictions_frame(table, indices, probs))
        submission = self.output_dir / f"submission_{split}.csv"
        written = write_submission(table, indices, probs, submission, fmt)
        log.info(
            "%s split (%s) has no label columns: wrote predictions_%s.csv%s, no %s/* metrics",
            split,
            table.source,
            split,
            f" and {submission.name}" if written else f" (no {submission.name}: see the error above)",
            split,
        )


def write_submission(table: ImageTable, indices: np.ndarray, probs: np.ndarray, path: Path, fmt: str) -> bool:
    """The submission of an unlabelled report split (``python -m mlgcn_lt.submit``'s writer and checks); whether
    it was written (an error is logged, naming why, when it was not)."""
    if len(indices) != len(table) or not np.array_equal(indices, np.arange(len(table))):
        log.error(
            "%s: %d of %d rows predicted (unreadable images skipped?): no %s",
            table.source,
            len(indices),
            len(table),
            path.name,
        )
        return False
    try:
        save_submission(table, probs, path, fmt=fmt)
    except SubmissionError as err:
        log.error("%s not written: %s", path.name, err)
        return False
    return True
