"""Bad input, faults and misuse: each row of the README's "What happens when..." table has a test here or is
named beside its test elsewhere (tables: test_tables.py; resume / SIGKILL / same-second runs: test_resume.py;
W&B: test_wandb.py; cache interruption: test_preprocess.py)."""

from __future__ import annotations

import errno
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from helpers import TINY_OVERRIDES, compose_config, cxr_lt_frame, make_datamodule, write_cxr_lt_dir, write_image
from mlgcn_lt.data.classes import CXR_LT_2023_CLASSES
from mlgcn_lt.data.config import BadImagesConfig
from mlgcn_lt.data.images import ImageDecodeError, load_grayscale
from mlgcn_lt.data.samplers import LeastSampledClassSampler
from mlgcn_lt.data.tables import TableError
from mlgcn_lt.data.validate import BadImagesError, check_image
from mlgcn_lt.data.validate import main as validate_main
from mlgcn_lt.training.guards import check_config
from mlgcn_lt.training.nonfinite import NonFiniteLossError
from mlgcn_lt.training.rundirs import AtomicCheckpointIO
from mlgcn_lt.training.train import train


def _dm(root, **kw):
    return make_datamodule(root, **kw)


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


# ------------------------------------------------------------------ images


@pytest.fixture
def spoiled(tmp_path) -> tuple[Path, list[Path]]:
    root = write_cxr_lt_dir(tmp_path / "ds")
    bad = [_spoil(root, "train", 3, "missing"), _spoil(root, "train", 5, "empty"), _spoil(root, "test", 2, "text")]
    return root, bad


def test_error_policy_stops_at_setup_naming_every_bad_file(spoiled, tmp_path):
    root, bad = spoiled
    with pytest.raises(BadImagesError) as e:
        _dm(root, bad_images={"report_dir": str(tmp_path / "run")}).setup()
    message = str(e.value)
    assert "3 image(s) cannot be read" in message and "data.bad_images.policy=skip" in message
    for path in bad:
        assert str(path) in message
    listed = pd.read_csv(tmp_path / "run" / "bad_images.csv")
    assert sorted(listed["path"]) == sorted(map(str, bad)) and (listed["line"] > 1).all()


def test_skip_policy_drops_them_lists_them_and_never_substitutes(spoiled, tmp_path):
    root, bad = spoiled
    dm = _dm(root, bad_images={"policy": "skip", "report_dir": str(tmp_path / "run")})
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
    dm = _dm(root, bad_images={"report_dir": str(tmp_path / "run")})
    dm.setup()
    with pytest.raises(ImageDecodeError, match=str(bad)):
        next(iter(dm.val_dataloader()))
    dm = _dm(root, bad_images=BadImagesConfig(policy="skip", report_dir=str(tmp_path / "run")))
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


@pytest.mark.parametrize("kind", ["16bit", "rgba", "cmyk", "1x1"])
def test_unusual_but_valid_images_load(tmp_path, kind):
    if kind == "16bit":
        path = write_image(tmp_path / "x.png", (40, 30), mode="I;16")
    elif kind == "rgba":
        path = write_image(tmp_path / "x.png", (40, 30), mode="RGBA")
    elif kind == "cmyk":
        path = write_image(tmp_path / "x.jpg", (40, 30), mode="CMYK", fmt="JPEG")
    else:
        path = write_image(tmp_path / "x.png", (1, 1))
    assert check_image(str(path), "full") is None
    assert load_grayscale(path, 32).size == (32, 32)


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    path = write_image(tmp_path / "big.png", (200, 200))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # 200 x 200 = 4 x the limit
    assert "decompression bomb" in check_image(str(path), "header")
    with pytest.raises(ImageDecodeError, match="big.png"):
        load_grayscale(path, 32)


# ------------------------------------------------------------------ tables


def test_a_split_with_zero_images_is_an_error(tmp_path):
    root = write_cxr_lt_dir(tmp_path / "ds")
    pd.DataFrame(columns=cxr_lt_frame(1).columns).to_csv(root / "development.csv", index=False)
    with pytest.raises(TableError, match="development.csv: the table has a header but no rows"):
        _dm(root).setup()


# ------------------------------------------------------------------ label statistics edge cases


def _labels_dir(tmp_path: Path, train_labels: np.ndarray, classes=CXR_LT_2023_CLASSES) -> Path:
    root = tmp_path / "edge"
    for split, labels in (("train", train_labels), ("development", train_labels), ("test", train_labels)):
        df = cxr_lt_frame(len(labels), seed=hash(split) % 100, classes=classes, subject_offset=len(split) * 1000)
        df[list(classes)] = labels.astype(int)
        for i, rel in enumerate(df["path"]):
            write_image(root / rel, (40, 40), seed=i)
        df.to_csv(root / f"{split}.csv", index=False)
    return root


@pytest.mark.slow  # trains through train() / fit
@pytest.mark.parametrize("case", ["no_positive", "no_negative", "single_image"])
def test_degenerate_label_statistics_train_with_warnings(tmp_path, hydra_cleanup, case, caplog):
    rng = np.random.default_rng(0)
    labels = (rng.random((12, 26)) < 0.3).astype(float)
    if case == "no_positive":
        labels[:, CXR_LT_2023_CLASSES.index("Hernia")] = 0
    elif case == "no_negative":
        labels[:, CXR_LT_2023_CLASSES.index("Support Devices")] = 1
    else:
        labels = labels[:1]
    root = _labels_dir(tmp_path, labels)
    for row in ("+experiment=ablation_lse_mha",):  # glove, graph, cycle sampler, experts, RIDE, metrics
        cfg = compose_config(
            [
                f"data.root={root}",
                *TINY_OVERRIDES,
                row,
                "debug=fdr",
                "data.batch_size=2",
                "data.val_csv=development.csv",
                "data.dev_csv=null",
            ],
            tmp_path / "run",
        )  # val given (a single training image cannot also give a carved one); dev off: one file, one split
        metrics = train(cfg)
        values = [v for k, v in metrics.items() if k.startswith("test/m") and isinstance(v, float)]
        assert all(np.isnan(v) or 0 <= v <= 1 for v in values)
    if case == "no_positive":
        assert metrics["test/n_classes_without_positives"] >= 1 and np.isnan(metrics["test/AP/Hernia"])
        assert "no positive training image" in caplog.text and "Hernia" in caplog.text
    if case == "no_negative":
        assert np.isnan(metrics["test/AUC/Support Devices"]) and metrics["test/AP/Support Devices"] == 1.0


@pytest.mark.slow  # trains through train() / fit
def test_one_class_only(tmp_path, hydra_cleanup):
    root = tmp_path / "one"
    df = pd.DataFrame(
        {"file": [f"im{i}.png" for i in range(12)], "Edema": [i % 3 == 0 for i in range(12)], "pid": range(12)}
    )
    for f in df["file"]:
        write_image(root / f, (40, 40))
    df["Edema"] = df["Edema"].astype(int)
    df.to_csv(root / "labels.csv", index=False)
    cfg = compose_config(
        [
            "data=csv",
            f"data.root={root}",
            "data.train_csv=labels.csv",
            "data.columns.path_column=file",
            "data.columns.label_columns=[Edema]",
            "data.columns.group_column=pid",
            *TINY_OVERRIDES,
            "debug=fdr",
            "data.batch_size=2",
            "+experiment=ablation_ride",
        ],
        tmp_path / "run",
    )
    metrics = train(cfg)
    assert "test/AP/Edema" in metrics


# ------------------------------------------------------------------ configurations


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.num_experts=0", "model.num_experts=0: at least one expert"),
        ("data.image_size=100", "data.image_size=100 is not a positive multiple of 32.*use e.g. 96 or 128"),
        ("data.batch_size=0", "data.batch_size=0: must be at least 1"),
        ("data.loader.eval_batch_size=0", "data.loader.eval_batch_size=0: must be at least 1"),
    ],
)
def test_impossible_combinations_say_what_to_change(tiny_cfg, override, message):
    from mlgcn_lt.training.train import plain_config

    with pytest.raises(ValueError, match=message):
        check_config(plain_config(tiny_cfg(override)))


def test_least_sampled_epoch_too_long_without_replacement():
    labels = np.eye(5, dtype=np.float32)[[0, 1, 2, 3, 4, 0]]
    labels[5] = 0  # one image without any positive label
    assert LeastSampledClassSampler(labels, replacement=False).num_samples == 5
    assert sorted(LeastSampledClassSampler(labels, replacement=False)) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="num_samples=6 is longer than the 5 images.*replacement=true"):
        LeastSampledClassSampler(labels, num_samples=6, replacement=False)


# ------------------------------------------------------------------ checkpoints


@pytest.mark.slow  # trains through train() / fit
def test_resuming_with_another_number_of_experts_names_the_difference(tiny_cfg, tmp_path):
    first = tiny_cfg("trainer.max_epochs=1", "model/label_embedding=random")
    ckpt = train(first)["best_checkpoint"]
    second = tiny_cfg(
        "trainer.max_epochs=2", "model/label_embedding=random", "model.num_experts=2", f"ckpt_path={ckpt}"
    )
    with pytest.raises(ValueError, match="num_experts: checkpoint 1, this model 2"):
        train(second)


# ------------------------------------------------------------------ faults


class _NaNAfter(torch.nn.Module):
    """Wraps a loss: its ``div`` term becomes NaN from training step ``step`` on."""

    def __init__(self, inner, step: int):
        super().__init__()
        self.inner, self.step, self.calls = inner, step, 0

    def forward(self, output, targets):
        out = self.inner(output, targets)
        if self.training:
            self.calls += 1
        if self.training and self.calls > self.step:
            div = torch.tensor(float("nan"))
            return type(out)(out.total + div, {**out.terms, "div": div})
        return out


def _with_nan_loss(monkeypatch, step: int) -> None:
    from mlgcn_lt.training import train as pipeline

    build = pipeline.build

    def patched(cfg, callbacks=None):
        dm, model, trainer = build(cfg, callbacks)
        model.loss_fn = _NaNAfter(model.loss_fn, step)
        return dm, model, trainer

    monkeypatch.setattr(pipeline, "build", patched)


@pytest.mark.slow  # trains through train() / fit
def test_nonfinite_loss_stops_naming_step_and_term(tiny_cfg, monkeypatch):
    _with_nan_loss(monkeypatch, step=3)
    cfg = tiny_cfg("trainer.max_epochs=2", "model/label_embedding=random", "trainer.log_every_n_steps=4")
    with pytest.raises(NonFiniteLossError, match=r"global step 3 .*total, div is NaN or infinite"):
        train(cfg)
    assert not (Path(cfg.hydra.runtime.output_dir) / "metrics.json").exists()


@pytest.mark.slow  # trains through train() / fit
def test_nonfinite_batches_can_be_skipped_and_counted(tiny_cfg, monkeypatch):
    _with_nan_loss(monkeypatch, step=5)
    cfg = tiny_cfg("trainer.max_epochs=1", "model/label_embedding=random", "callbacks.nonfinite.policy=skip")
    metrics = train(cfg)
    assert 0 <= metrics["test/mAP"] <= 1
    logged = pd.read_csv(Path(cfg.hydra.runtime.output_dir) / "csv" / "metrics.csv")
    # 34 training images (40 minus the 6 of the carved val split, docs/protocol.md), batch 4: 8 steps
    assert logged["train/skipped_nonfinite"].dropna().iloc[-1] == 3  # steps 6, 7, 8 of 8


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, path)
    real_save = torch.save

    def full(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError, match="disk full while writing checkpoint .*previous checkpoint is intact"):
        io.save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_metrics_json_is_written_atomically(tmp_path, monkeypatch):
    from mlgcn_lt.utils import io

    io.write_json(tmp_path / "metrics.json", {"a": 1})

    def crash(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(io.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        io.write_json(tmp_path / "metrics.json", {"a": 2})
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
