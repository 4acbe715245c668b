"""Tests of the synthetic CXR-LT generator (:mod:`mlgcn_lt.data.synthetic`)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mlgcn_lt.data import synthetic as syn
from mlgcn_lt.data.classes import CXR_LT_2023_CLASSES, CXR_LT_2023_METADATA, CXR_LT_2023_TRAIN_IMAGES

SMALL = {"n_train": 60, "n_dev": 20, "n_test": 20, "image_size": 64}
REPO = Path(__file__).resolve().parents[2]
STATS = Path(__file__).resolve().parents[3] / "shared" / "data" / "cxr_lt_2023_stats"
CLASSES = list(CXR_LT_2023_CLASSES)
PATH_RE = re.compile(r"files/p(\d\d)/p(\d{8})/s(\d{8})/([0-9a-f]{8}(?:-[0-9a-f]{8}){4})\.jpg")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return syn.generate(tmp_path_factory.mktemp("syn") / "data", seed=0, **SMALL)


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    return syn.sample_labels(50_000, np.random.default_rng(0)).astype(float)


def _tables(root: Path) -> dict[str, pd.DataFrame]:
    return {s: pd.read_csv(root / f"{s}.csv") for s in syn.SPLITS}


# ---------------------------------------------------------------------------------------------------- layout
def test_layout(small: Path) -> None:
    tables = _tables(small)
    assert [len(t) for t in tables.values()] == [60, 20, 20]
    for table in tables.values():
        assert list(table.columns) == [*CXR_LT_2023_METADATA, "path", *CLASSES]
        assert set(np.unique(table[CLASSES].to_numpy())) <= {0, 1}
        assert all(pd.api.types.is_integer_dtype(table[c]) for c in CLASSES)
        meaning = table["ViewPosition"].map(syn.VIEW_MEANINGS)
        assert (meaning == table["ViewCodeSequence_CodeMeaning"]).all()
        for row in table.itertuples():
            m = PATH_RE.fullmatch(row.path)
            assert m, row.path
            assert (m[1], int(m[2]), int(m[3]), m[4]) == (
                str(row.subject_id)[:2],
                row.subject_id,
                row.study_id,
                row.dicom_id,
            )
            with Image.open(small / row.path) as img:
                assert (img.format, img.mode, img.size) == ("JPEG", "L", (64, 64))
        studies = table.groupby("study_id")
        assert studies.size().between(1, 2).all()
        assert (studies[CLASSES].nunique() == 1).all().all(), "images of a study share its labels"
        assert table.groupby("subject_id")["study_id"].nunique().between(1, 3).all()
    subjects = [set(t["subject_id"]) for t in tables.values()]
    assert not (subjects[0] & subjects[1] or subjects[0] & subjects[2] or subjects[1] & subjects[2])
    dicoms = pd.concat([t["dicom_id"] for t in tables.values()])
    assert dicoms.is_unique
    manifest = json.loads((small / syn.MANIFEST).read_text())
    assert manifest["format_version"] == syn.FORMAT_VERSION
    assert manifest["params"] == {"seed": 0, **SMALL}
    assert syn.is_complete(small, seed=0, **SMALL)


def test_generate_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        syn.generate(tmp_path, **SMALL)


# ----------------------------------------------------------------------------------------------- determinism
def test_determinism(small: Path, tmp_path: Path) -> None:
    again = syn.generate(tmp_path / "again", seed=0, **SMALL)
    for split in syn.SPLITS:
        assert (small / f"{split}.csv").read_bytes() == (again / f"{split}.csv").read_bytes()
    for path in pd.read_csv(small / "train.csv")["path"]:
        a, b = np.asarray(Image.open(small / path)), np.asarray(Image.open(again / path))
        assert np.array_equal(a, b)
    other = syn.generate(tmp_path / "other", seed=1, **SMALL)
    assert (small / "train.csv").read_bytes() != (other / "train.csv").read_bytes()


# -------------------------------------------------------------------------------------------- label realism
def test_calibrated_marginals_match_the_real_long_tail() -> None:
    model = syn.label_model()
    np.testing.assert_allclose(model.state_prob @ model.posterior, syn.target_rates(), rtol=1e-6)


def test_label_frequencies(labels: np.ndarray) -> None:
    freq = labels.mean(0)
    order = [CLASSES[i] for i in np.argsort(-freq)]
    assert order[0] == "Support Devices"
    assert "Pneumoperitoneum" in order[-3:]
    assert 100 < freq.max() / freq.min() < 300
    target = syn.target_rates()
    assert (np.abs(freq - target) <= 4 * np.sqrt(target * (1 - target) / len(labels))).all()  # 4 sigma


def test_no_finding_only_with_support_devices(labels: np.ndarray) -> None:
    nf = labels[:, CLASSES.index("No Finding")] == 1
    others = np.delete(labels, [CLASSES.index("No Finding"), CLASSES.index("Support Devices")], axis=1)
    assert np.array_equal(nf, others.sum(1) == 0)
    assert 0 < labels[nf, CLASSES.index("Support Devices")].mean() < 0.5


def test_label_cardinality(labels: np.ndarray) -> None:
    count = labels.sum(1)
    assert count.min() >= 1
    assert 1.7 < count.mean() < 2.6
    assert 0.4 < (count >= 2).mean() < 0.8


def test_clinical_clusters_are_not_independent(labels: np.ndarray) -> None:
    p = labels.mean(0)

    def lift(a: str, b: str) -> float:
        i, j = CLASSES.index(a), CLASSES.index(b)
        return float((labels[:, i] * labels[:, j]).mean() / (p[i] * p[j]))

    assert lift("Mass", "Lung Lesion") > 2
    assert lift("Pneumothorax", "Subcutaneous Emphysema") > 2
    assert lift("Calcification of the Aorta", "Tortuous Aorta") > 2
    assert lift("Emphysema", "Fibrosis") > 2
    assert lift("Cardiomegaly", "Edema") > 1.1


@pytest.mark.skipif(not (STATS / "cooccurrence.csv").is_file(), reason=f"real CXR-LT statistics absent: {STATS}")
def test_cooccurrence_correlates_with_the_real_one(labels: np.ndarray) -> None:
    real = pd.read_csv(STATS / "cooccurrence.csv", index_col=0).loc[CLASSES, CLASSES].to_numpy(float)
    counts = pd.read_csv(STATS / "class_counts.csv", index_col=0).loc[CLASSES, "train_positives"].to_numpy(float)
    off = ~np.eye(len(CLASSES), dtype=bool)
    co = labels.T @ labels
    cond_real, cond_syn = real / counts[:, None], co / labels.sum(0)[:, None]
    assert np.corrcoef(cond_real[off], cond_syn[off])[0, 1] > 0.7
    # beyond the marginals: the lifts P(j|i) / P(j) correlate too, over pairs seen often enough in reality
    lift_real = cond_real / (counts / CXR_LT_2023_TRAIN_IMAGES)[None, :]
    lift_syn = cond_syn / labels.mean(0)[None, :]
    keep = off & (real > 20)
    assert np.corrcoef(np.log(lift_real[keep] + 1e-3), np.log(lift_syn[keep] + 1e-3))[0, 1] > 0.4


@pytest.mark.parametrize("seed", [0, 1])
def test_minimum_positives_per_split(seed: int) -> None:
    tables = syn.build_tables(seed)
    for split, table in tables.items():
        need = syn.min_positives(split, len(table))
        assert need == syn.MIN_POSITIVES[split] == (8 if split == "train" else 3)
        assert table[CLASSES].sum().min() >= need, split


# ---------------------------------------------------------------------------------------------------- ensure
def test_ensure_reuses_and_regenerates(tmp_path: Path) -> None:
    out = tmp_path / "data"
    assert syn.ensure(out, seed=0, **SMALL) == out
    stamp = (out / syn.MANIFEST).stat().st_mtime_ns
    syn.ensure(out, seed=0, **SMALL)
    assert (out / syn.MANIFEST).stat().st_mtime_ns == stamp
    syn.ensure(out, seed=1, **SMALL)
    assert json.loads((out / syn.MANIFEST).read_text())["params"]["seed"] == 1
    assert syn.is_complete(out, seed=1, **SMALL) and not syn.is_complete(out, seed=0, **SMALL)
    syn.ensure(out, seed=1, **SMALL, force=True)
    assert (out / syn.MANIFEST).stat().st_mtime_ns != stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"], "no temporary or old copies left"


def test_incomplete_data_sets_are_not_complete(tmp_path: Path) -> None:
    out = tmp_path / "data"
    syn.generate(out, **SMALL)
    (out / syn.MANIFEST).unlink()
    assert not syn.is_complete(out, **SMALL)
    done = subprocess.Popen([sys.executable, "-c", ""])
    done.wait()  # a pid that no longer runs: its temporary copy is stale
    stale = tmp_path / f".data.tmp-{done.pid}-deadbeef"
    syn.generate(stale, **SMALL)
    assert syn.is_complete(stale, **SMALL) and not syn.is_complete(out, **SMALL)
    syn.ensure(out, **SMALL)
    assert syn.is_complete(out, **SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_interrupted_generation_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def broken(*args: object, **kwargs: object) -> tuple[np.ndarray, dict]:
        calls.append(1)
        if len(calls) > 10:
            raise KeyboardInterrupt
        return np.zeros((8, 8), np.uint8), {}

    monkeypatch.setattr(syn, "draw_image_with_boxes", broken)
    with pytest.raises(KeyboardInterrupt):
        syn.ensure(tmp_path / "data", **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_ensure_refuses_to_replace_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a data set")
    with pytest.raises(FileExistsError):
        syn.ensure(tmp_path, **SMALL)
    assert (tmp_path / "notes.txt").is_file()


def test_concurrent_ensure(tmp_path: Path) -> None:
    out = tmp_path / "data"
    code = f"from mlgcn_lt.data import synthetic as s; s.ensure({str(out)!r}, **{SMALL!r})"
    procs = [subprocess.Popen([sys.executable, "-c", code], env=_env()) for _ in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    assert syn.is_complete(out, **SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    for path in pd.read_csv(out / "test.csv")["path"]:
        assert (out / path).is_file()


# ------------------------------------------------------------------------------------------------------- CLI
def test_cli(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "mlgcn_lt.data.synthetic", "--out", str(out), "--n-train", "30"]
    cmd += ["--n-dev", "10", "--n-test", "10", "--image-size", "32", "--seed", "3"]
    res = subprocess.run(cmd, env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "train" in res.stdout and "Support Devices" in res.stdout
    assert [len(t) for t in _tables(out).values()] == [30, 10, 10]
    assert json.loads((out / syn.MANIFEST).read_text())["params"]["seed"] == 3
    with Image.open(out / pd.read_csv(out / "train.csv")["path"][0]) as img:
        assert img.size == (32, 32)


def test_boxes_csv_records_where_each_cue_was_drawn(tmp_path: Path) -> None:
    out = syn.ensure(tmp_path / "data", **SMALL)
    boxes = pd.read_csv(out / syn.BOXES)
    assert list(boxes.columns) == list(syn.BOX_COLUMNS) and len(boxes) > 0
    size = SMALL.get("image_size", syn.DEFAULTS["image_size"])
    assert (boxes[["x", "y"]] >= 0).all().all() and ((boxes.x + boxes.w) <= size).all()
    assert ((boxes.y + boxes.h) <= size).all() and (boxes[["w", "h"]] > 0).all().all()
    for split in syn.SPLITS:  # every box belongs to a positive image of its split
        table = pd.read_csv(out / f"{split}.csv").set_index("dicom_id")
        rows = boxes[boxes.split == split]
        assert all(table.loc[d, c] == 1 for d, c in zip(rows.dicom_id, rows["class"], strict=True))


def test_a_box_covers_its_cue_and_leaves_the_image_unchanged() -> None:
    from mlgcn_lt.data.synthetic.draw import draw_image, draw_image_with_boxes

    def draw(fn, **kw):  # the same generators for every call
        return fn({"Nodule"}, "PA", 96, np.random.default_rng(5), np.random.default_rng(6), **kw)

    img = draw(draw_image_with_boxes)[0]
    assert np.array_equal(draw(draw_image), img)  # recording boxes draws nothing from the generators
    x, y, w, h = draw(draw_image_with_boxes, contrast=1.0)[1]["Nodule"]
    bright = draw(draw_image_with_boxes, contrast=1.0)[0].astype(float)
    assert w * h < 0.05 * 96 * 96  # a nodule's box is small...
    ring = bright[max(0, y - h) : y + 2 * h, max(0, x - w) : x + 2 * w]
    assert bright[y : y + h, x : x + w].mean() > ring.mean() + 10  # ...and sits on the bright blob
