"""Optuna searches (``hparams_search=optuna``) in a report: trials ranked, best parameters as an override line.

A search directory holds ``optuna.db`` (conf/hparams_search/optuna.yaml); every study in it is reported.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

DB_NAME = "optuna.db"


def find_databases(paths: Iterable[str | Path]) -> list[Path]:
    """``optuna.db`` files in (or given as) ``paths``, not searched below the given folders."""
    found = []
    for p in map(Path, paths):
        db = p if p.name == DB_NAME else p / DB_NAME
        if db.is_file():
            found.append(db)
    return found


def _value(value: Any) -> str:
    """An override value Hydra parses back to the same thing (floats with enough digits)."""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def override_line(params: dict[str, Any]) -> str:
    """``key=value`` overrides, sorted, ready to paste after ``python train.py``."""
    return " ".join(f"{k}={_value(v)}" for k, v in sorted(params.items()))


def trials_frame(db: str | Path, study_name: str) -> pd.DataFrame:
    """One row per trial: number, state, value, params; finished trials first, best first (maximised)."""
    import optuna

    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{Path(db).resolve()}")
    rows = [
        {"trial": t.number, "state": t.state.name, "value": t.value, **t.params}
        for t in study.get_trials(deepcopy=False)
    ]
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    maximise = study.direction == optuna.study.StudyDirection.MAXIMIZE
    key = df["value"].map(lambda v: math.inf if v is None or pd.isna(v) else (-v if maximise else v))
    return df.assign(_key=key).sort_values(["_key", "trial"]).drop(columns="_key").reset_index(drop=True)


def study_section(db: str | Path, study_name: str, digits: int = 4) -> str:
    """Markdown: the trials ranked and the best parameters as an override line."""
    df = trials_frame(db, study_name)
    lines = [f"## Search `{study_name}` ({db})", ""]
    if df.empty:
        return "\n".join([*lines, "No trials yet.", ""])
    done = df[df.state == "COMPLETE"]
    lines.append(f"{len(df)} trials, {len(done)} complete; ranked by value (best first).")
    lines.append("")
    shown = df.copy()
    shown["value"] = shown["value"].map(lambda v: "" if v is None or pd.isna(v) else f"{v:.{digits}f}")
    for col in shown.columns[3:]:
        shown[col] = shown[col].map(lambda v: "" if v is None or (isinstance(v, float) and pd.isna(v)) else _value(v))
    lines.append("| " + " | ".join(shown.columns) + " |")
    lines.append("|" + "---|" * len(shown.columns))
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in shown.itertuples(index=False)]
    if len(done):
        best = done.iloc[0]
        params = {k: best[k] for k in df.columns[3:] if not (isinstance(best[k], float) and pd.isna(best[k]))}
        lines += ["", f"Best: trial {best.trial}, value {best.value:.{digits}f}. Overrides:", ""]
        lines += ["```", override_line(params), "```"]
    return "\n".join(lines) + "\n"


def search_report(paths: Sequence[str | Path], digits: int = 4) -> str:
    """The sections of every study in the ``optuna.db`` of ``paths``; empty when there is none."""
    import optuna

    sections = []
    for db in find_databases(paths):
        for summary in optuna.get_all_study_summaries(storage=f"sqlite:///{db.resolve()}"):
            sections.append(study_section(db, summary.study_name, digits))
    return "\n" + "\n".join(sections) if sections else ""
