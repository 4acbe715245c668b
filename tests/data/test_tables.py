"""Table readers: formats, class order, label validation, path checks, patient splits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from helpers import NIH_SAMPLE, cxr_lt_frame, make_datamodule, write_cxr_lt_dir
from mlgcn_lt.data.classes import CXR_LT_2023_CLASSES
from mlgcn_lt.data.tables import TableError, read_csv_table, read_cxr_lt, read_nih, split_by_group


def _write(df: pd.DataFrame, path) -> str:
    df.to_csv(path, index=False)
    return str(path)


@pytest.mark.parametrize("path_column", ["path", "fpath"])
def test_cxr_lt_reads_path_or_fpath(tmp_path, path_column):
    df = cxr_lt_frame(10, path_column=path_column)
    t = read_cxr_lt(_write(df, tmp_path / "t.csv"), tmp_path)
    assert t.classes == list(CXR_LT_2023_CLASSES)
    assert t.labels.shape == (10, 26) and t.labels.dtype == np.float32
    np.testing.assert_array_equal(t.labels, df[list(CXR_LT_2023_CLASSES)].to_numpy(np.float32))
    assert t.paths == df[path_column].tolist()
    assert t.group_column == "subject_id"
    assert t.image_path(0) == tmp_path / df[path_column][0]


def test_cxr_lt_reordered_classes_are_mapped_by_name(tmp_path):
    df = cxr_lt_frame(8)
    shuffled = list(reversed(CXR_LT_2023_CLASSES))
    df2 = df[[*df.columns[:6], *shuffled]]
    t = read_cxr_lt(_write(df2, tmp_path / "t.csv"), tmp_path)
    assert t.classes == list(CXR_LT_2023_CLASSES)
    np.testing.assert_array_equal(t.labels, df[list(CXR_LT_2023_CLASSES)].to_numpy(np.float32))


def test_cxr_lt_missing_or_extra_class_is_an_error(tmp_path):
    df = cxr_lt_frame(5).drop(columns=["Hernia"]).assign(Hernai=0)
    with pytest.raises(TableError, match=r"missing \['Hernia'\], unexpected \['Hernai'\]"):
        read_cxr_lt(_write(df, tmp_path / "t.csv"), tmp_path)


def test_cxr_lt_without_path_column(tmp_path):
    df = cxr_lt_frame(5).rename(columns={"path": "file"})
    with pytest.raises(TableError, match="'path' or 'fpath'"):
        read_cxr_lt(_write(df, tmp_path / "t.csv"), tmp_path)


def test_blank_labels_are_unknown(tmp_path):
    df = cxr_lt_frame(5).astype({"Edema": object})
    df.loc[2, "Edema"] = ""
    t = read_cxr_lt(_write(df, tmp_path / "t.csv"), tmp_path)
    j = t.classes.index("Edema")
    assert np.isnan(t.labels[2, j]) and not np.isnan(np.delete(t.labels[:, j], 2)).any()


@pytest.mark.parametrize("bad", ["2", "-1", "yes", "inf", "0.5"])
def test_invalid_label_values_name_file_line_and_column(tmp_path, bad):
    df = cxr_lt_frame(6).astype({"Mass": object})
    df.loc[3, "Mass"] = bad
    path = _write(df, tmp_path / "t.csv")
    with pytest.raises(TableError) as e:
        read_cxr_lt(path, tmp_path)
    msg = str(e.value)
    assert "t.csv" in msg and "'Mass'" in msg and "line 5" in msg and repr(bad) in msg


@pytest.mark.parametrize(("policy", "expected"), [("zero", 0.0), ("one", 1.0), ("ignore", np.nan)])
def test_uncertain_policy_maps_minus_one(tmp_path, policy, expected):
    df = cxr_lt_frame(6).astype({"Mass": object})
    df.loc[3, "Mass"] = "-1"
    t = read_cxr_lt(_write(df, tmp_path / "t.csv"), tmp_path, uncertain=policy)
    np.testing.assert_equal(t.labels[3, t.classes.index("Mass")], expected)


def test_unlabelled_challenge_test_file(tmp_path):
    df = cxr_lt_frame(4)[["dicom_id", "subject_id", "study_id", "ViewPosition", "ViewCodeSequence_CodeMeaning", "path"]]
    t = read_cxr_lt(_write(df, tmp_path / "t.csv"), tmp_path, require_labels=False)
    assert t.labels.shape == (4, 26) and np.isnan(t.labels).all()
    with pytest.raises(TableError):
        read_cxr_lt(_write(df, tmp_path / "t.csv"), tmp_path)


@pytest.mark.parametrize("path", ["../outside.jpg", "files/../../x.jpg", "/etc/passwd"])
def test_paths_escaping_root_are_refused(tmp_path, path):
    df = cxr_lt_frame(3)
    df.loc[1, "path"] = path
    with pytest.raises(TableError, match="escapes data.root"):
        read_cxr_lt(_write(df, tmp_path / "t.csv"), tmp_path)


def test_duplicated_images_are_refused(tmp_path):
    df = cxr_lt_frame(4)
    df.loc[3, "path"] = df.loc[1, "path"]
    with pytest.raises(TableError, match="line 5.*listed again.*line 3"):
        read_cxr_lt(_write(df, tmp_path / "t.csv"), tmp_path)


def test_missing_and_empty_tables(tmp_path):
    with pytest.raises(TableError, match="not found"):
        read_cxr_lt(tmp_path / "nope.csv", tmp_path)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(TableError, match="empty"):
        read_cxr_lt(tmp_path / "empty.csv", tmp_path)
    (tmp_path / "header.csv").write_text(",".join(cxr_lt_frame(1).columns) + "\n")
    with pytest.raises(TableError, match="no rows"):
        read_cxr_lt(tmp_path / "header.csv", tmp_path)


def test_duplicated_column_is_refused(tmp_path):
    text = "path,Edema,Edema\na.png,1,0\n"
    (tmp_path / "t.csv").write_text(text)
    with pytest.raises(TableError, match="duplicated column"):
        read_csv_table(tmp_path / "t.csv", tmp_path, path_column="path", label_columns=["Edema"])


def test_nih_finding_labels(tmp_path):
    df = pd.DataFrame(
        {
            "Image Index": ["a.png", "b.png", "c.png"],
            "Finding Labels": ["Cardiomegaly|Effusion", "No Finding", "Hernia"],
            "Follow-up #": [0, 0, 1],
            "Patient ID": [1, 2, 2],
        }
    )
    t = read_nih(_write(df, tmp_path / "d.csv"), tmp_path)
    assert len(t.classes) == 15
    row0 = {c for c, v in zip(t.classes, t.labels[0], strict=True) if v == 1}
    assert row0 == {"Cardiomegaly", "Effusion"}
    assert t.labels[1, t.classes.index("No Finding")] == 1 and t.labels[1].sum() == 1
    assert t.paths[0] == "images/a.png" and t.group_column == "Patient ID"
    df.loc[2, "Finding Labels"] = "Hernia|Pneumonitis"
    with pytest.raises(TableError, match=r"line 4: unknown finding 'Pneumonitis'"):
        read_nih(_write(df, tmp_path / "d.csv"), tmp_path)


def test_generic_csv_needs_its_named_columns(tmp_path):
    df = pd.DataFrame({"file": ["a.png", "b.png"], "A": [1, 0], "B": [0, ""], "pid": [1, 2]})
    t = read_csv_table(
        _write(df, tmp_path / "g.csv"),
        tmp_path,
        path_column="file",
        label_columns=["B", "A"],
        group_column="pid",
    )
    assert t.classes == ["B", "A"]
    np.testing.assert_array_equal(t.labels, [[0, 1], [np.nan, 0]])
    with pytest.raises(TableError, match=r"missing column\(s\) \['C'\]"):
        read_csv_table(tmp_path / "g.csv", tmp_path, path_column="file", label_columns=["A", "C"])


def test_split_by_group_is_disjoint_covering_and_seeded(tmp_path):
    df = cxr_lt_frame(200)
    t = read_cxr_lt(_write(df, tmp_path / "t.csv"), tmp_path)
    val, test, train = split_by_group(t, [0.1, 0.2], seed=3)
    assert sorted(np.concatenate([val, test, train]).tolist()) == list(range(200))
    groups = t.groups()
    assert not set(groups[val]) & set(groups[train]) and not set(groups[test]) & set(groups[train])
    assert not set(groups[val]) & set(groups[test])
    assert abs(len(val) - 20) <= 2 and abs(len(test) - 40) <= 2
    again = split_by_group(t, [0.1, 0.2], seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(again, [val, test, train], strict=True))
    assert not np.array_equal(split_by_group(t, [0.1, 0.2], seed=4)[0], val)


def test_split_gives_small_fractions_at_least_one_group(tmp_path):
    t = read_cxr_lt(_write(cxr_lt_frame(6), tmp_path / "t.csv"), tmp_path)
    val, test, train = split_by_group(t, [0.01, 0.01], seed=0)
    assert len(val) >= 1 and len(test) >= 1 and len(train) >= 1


@pytest.mark.skipif(not NIH_SAMPLE.is_dir(), reason="../shared/data/nih_cxr14_sample is absent (a user's clone)")
def test_real_nih_sample_table():
    t = read_nih(NIH_SAMPLE / "Data_Entry_2017_v2020.csv", NIH_SAMPLE)
    assert len(t) == 1617 and len(t.classes) == 15
    counts = dict(zip(t.classes, t.labels.sum(0).astype(int), strict=True))
    assert counts["Infiltration"] == 284 and counts["Hernia"] == 29 and counts["No Finding"] == 598
    assert int((t.labels[:, [c != "No Finding" for c in t.classes]].sum(1) >= 2).sum()) == 445
    assert len(set(t.groups())) == 881
    assert all(t.image_path(i).is_file() for i in range(0, 1617, 97))


@pytest.mark.parametrize("keep", ["path", "6 labels", "quoted"])
def test_row_cut_short_is_an_error_naming_file_and_line(tmp_path, keep):
    """An interrupted copy ends mid-row; pandas would pad it with blanks (= 26 unknown labels) and exit 0."""
    df = cxr_lt_frame(5)
    if keep == "quoted":  # quotes in the file take the csv-module path
        df["ViewCodeSequence_CodeMeaning"] = "postero-anterior, erect"
    text = df.to_csv(index=False).rstrip("\n").split("\n")
    first_label = df.columns.get_loc(CXR_LT_2023_CLASSES[0])
    cut = first_label if keep == "path" else first_label + 6
    last = text[-1]
    quoted = last.count('"') // 2  # a quoted field holds one comma of its own
    text[-1] = ",".join(last.split(",")[: cut + quoted])
    path = tmp_path / "t.csv"
    path.write_text("\n".join(text) + "\n")
    with pytest.raises(TableError, match=r"t\.csv: line 6: \d+ field\(s\), fewer than the header's 32"):
        read_cxr_lt(path, tmp_path)


def test_complete_row_with_empty_fields_and_blank_lines_still_reads(tmp_path):
    df = cxr_lt_frame(4).astype({"Edema": object})
    df.loc[1, "Edema"] = ""
    path = tmp_path / "t.csv"
    path.write_text(df.to_csv(index=False).replace("\n", "\n\n", 1))  # a blank line after the header
    t = read_cxr_lt(path, tmp_path)
    assert len(t) == 4 and np.isnan(t.labels[1, t.classes.index("Edema")])


@pytest.mark.parametrize("sep", [";", "\t"])
def test_other_separator_lists_the_columns_found(tmp_path, sep):
    df = cxr_lt_frame(3)
    df.to_csv(tmp_path / "t.csv", index=False, sep=sep)
    with pytest.raises(TableError, match=r"t\.csv: the header reads as one column.*'dicom_id', 'subject_id'") as e:
        read_cxr_lt(tmp_path / "t.csv", tmp_path)
    assert "comma" in str(e.value)


def test_a_split_with_zero_images_is_an_error(tmp_path):
    root = write_cxr_lt_dir(tmp_path / "ds")
    pd.DataFrame(columns=cxr_lt_frame(1).columns).to_csv(root / "development.csv", index=False)
    with pytest.raises(TableError, match="development.csv: the table has a header but no rows"):
        make_datamodule(root).setup()
