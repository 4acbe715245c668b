"""Bad images (mlgcn_lt/data/validate.py): the ``error`` / ``skip`` policies at setup and while training, the
truncated file only decoding finds, and ``python -m mlgcn_lt.data.validate``."""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd
import pytest

from helpers import make_datamodule, write_cxr_lt_dir, write_image
from mlgcn_lt.data.config import BadImagesConfig
from mlgcn_lt.data.images import ImageDecodeError
from mlgcn_lt.data.validate import BadImagesError, check_image
from mlgcn_lt.data.validate import main as validate_main


def _spoil(root: Path, split: str, row: int, how: str) -> Path:
    """Make row ``row`` of ``split`` a bad image: missing, empty, truncated or not an image."""
    rel = pd.read_csv(root / f"{split}.csv")["path"][row]
    path = root / rel
    if how == "missing":
        path.unlink()
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        write_image(path, (256, 256), fmt="JPEG")
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])  # headers intact, scan data cut
    elif how == "text":
        path.write_text("not an image")
    return path


@pytest.fixture
def spoiled(tmp_path) -> tuple[Path, list[Path]]:
    root = write_cxr_lt_dir(tmp_path / "ds")
    bad = [_spoil(root, "train", 3, "missing"), _spoil(root, "train", 5, "empty"), _spoil(root, "test", 2, "text")]
    return root, bad


def test_error_policy_stops_at_setup_naming_every_bad_file(spoiled, tmp_path):
    root, bad = spoiled
    with pytest.raises(BadImagesError) as e:
        make_datamodule(root, bad_images={"report_dir": str(tmp_path / "run")}).setup()
    message = str(e.value)
    assert "3 image(s) cannot be read" in message and "data.bad_images.policy=skip" in message
    for path in bad:
        assert str(path) in message
    listed = pd.read_csv(tmp_path / "run" / "bad_images.csv")
    assert sorted(listed["path"]) == sorted(map(str, bad)) and (listed["line"] > 1).all()


def test_skip_policy_drops_them_lists_them_and_never_substitutes(spoiled, tmp_path):
    root, bad = spoiled
    dm = make_datamodule(root, bad_images={"policy": "skip", "report_dir": str(tmp_path / "run")})
    dm.setup()
    assert [len(dm.tables[s]) for s in ("train", "val", "test")] == [38, 16, 15]
    kept = {str(dm.tables["train"].image_path(i)) for i in range(38)}
    assert not kept & {str(p) for p in bad}
    assert len(pd.read_csv(tmp_path / "run" / "bad_images.csv")) == 3
    assert len(dm.skipped) == 3


def test_truncated_image_found_while_training_is_skipped_or_named(tmp_path):
    root = write_cxr_lt_dir(tmp_path / "ds", {"train": 8, "development": 4, "test": 4})
    bad = _spoil(root, "development", 1, "truncated")  # the header reads fine: only decoding finds it
    assert check_image(str(bad), "header") is None and check_image(str(bad), "full") is not None
    dm = make_datamodule(root, bad_images={"report_dir": str(tmp_path / "run")})
    dm.setup()
    with pytest.raises(ImageDecodeError, match=str(bad)):
        next(iter(dm.val_dataloader()))
    dm = make_datamodule(root, bad_images=BadImagesConfig(policy="skip", report_dir=str(tmp_path / "run")))
    dm.setup()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batch = next(iter(dm.val_dataloader()))
    assert batch["index"].tolist() == [0, 2, 3]  # the bad row is dropped from its batch, not replaced
    assert any(str(bad) in str(w.message) for w in caught)
    assert str(bad) in (tmp_path / "run" / "bad_images.csv").read_text()


def test_validate_command_lists_bad_images(spoiled, tmp_path, hydra_cleanup, capsys):
    root, bad = spoiled
    code = validate_main(
        [f"data.root={root}", "data.synthetic=null", "--out", str(tmp_path / "bad.csv"), "--workers", "2"]
    )
    assert code == 1
    assert set(pd.read_csv(tmp_path / "bad.csv")["path"]) == {str(p) for p in bad}
    assert "3 bad image(s)" in capsys.readouterr().err
