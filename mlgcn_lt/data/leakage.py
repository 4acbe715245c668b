"""Cross-split leakage check: no image, and (where the tables name patients) no patient, in two splits.

An image in both train and an evaluation split inflates that split's metrics, silently; so does a patient whose
other images were trained on (chest X-rays of one patient look alike). Run once at setup over every split:

- the same image (path under ``data.root``) in two splits: an error naming a few, with the count;
- the same patient in two splits carved out of one table by :func:`~mlgcn_lt.data.tables.split_by_group` (ours):
  an error, since carving never splits a patient;
- the same patient in two splits of which one comes from a file the user gave: a warning with the counts (the
  user's choice, e.g. a published split that is not patient-disjoint).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from itertools import combinations

import numpy as np

from mlgcn_lt.data.tables import ImageTable, TableError

log = logging.getLogger(__name__)

#: How many overlapping images / patients an error or warning names.
SHOWN = 5


class LeakageError(TableError):
    """The same image, or a patient of carved splits, in two splits; the message names a few and the count."""


def check_split_leakage(tables: Mapping[str, ImageTable]) -> None:
    """Refuse images shared by two splits; refuse (carved) or warn about (given files) shared patients."""
    keys = {s: _image_keys(t) for s, t in tables.items()}
    for a, b in combinations(tables, 2):
        ta, tb = tables[a], tables[b]
        shared = keys[a].keys() & keys[b].keys()
        if shared:
            raise LeakageError(_describe_images(a, ta, keys[a], b, tb, keys[b], shared))
        if ta.group_column is None or tb.group_column is None:
            continue
        ga, gb = ta.groups().astype(str), tb.groups().astype(str)
        common = np.intersect1d(ga, gb)
        if common.size == 0:
            continue
        carved = ta.source == tb.source  # both parts of one table: split_by_group keeps a patient in one part
        where = _where(a, ta, b, tb)
        counts = (
            f"{common.size} patient(s) (column {tb.group_column!r}) have images in both {where}: "
            f"{int(np.isin(ga, common).sum())} of {a}'s {len(ta)} images and {int(np.isin(gb, common).sum())} of "
            f"{b}'s {len(tb)} images; e.g. {[str(g) for g in common[:SHOWN]]}"
        )
        if carved:
            raise LeakageError(
                f"internal error: splits carved out of {ta.source} by patient share patients: {counts}. "
                "Carving never splits a patient; please report this with the data config."
            )
        log.warning("%s. Metrics on %s are not patient-independent of %s (the given files' choice).", counts, b, a)


def _image_keys(table: ImageTable) -> dict[str, int]:
    """Normalised image path under ``data.root`` → row index."""
    root = str(table.root)
    return {os.path.normpath(os.path.join(root, p)): i for i, p in enumerate(table.paths)}


def _where(a: str, ta: ImageTable, b: str, tb: ImageTable) -> str:
    return f"{a} ({ta.source.name}) and {b} ({tb.source.name})"


def _describe_images(
    a: str, ta: ImageTable, ka: dict[str, int], b: str, tb: ImageTable, kb: dict[str, int], shared: set[str]
) -> str:
    first = sorted(shared, key=lambda k: kb[k])[:SHOWN]
    shown = "\n".join(
        f"  {tb.paths[kb[k]]} ({ta.source}:{int(ta.lines[ka[k]])}, {tb.source}:{int(tb.lines[kb[k]])})" for k in first
    )
    more = f"\n  ... and {len(shared) - SHOWN} more" if len(shared) > SHOWN else ""
    return (
        f"{len(shared)} image(s) are in both {_where(a, ta, b, tb)}, so {b} metrics would be measured on images "
        f"of {a}:\n{shown}{more}\nRemove them from one of the tables (or set data.{b}_csv=null to carve {b} out of "
        "train by patient)."
    )
