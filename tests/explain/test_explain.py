"""Explanations: maps of the image's shape that peak on a planted cue, the pointing game, the CLI and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image
from torch import nn

from helpers import compose_config
from mlgcn_lt.data import synthetic as syn
from mlgcn_lt.data.stats import LabelStats
from mlgcn_lt.explain.boxes import BoxError, read_boxes
from mlgcn_lt.explain.cams import class_maps, gcn_cam
from mlgcn_lt.explain.cli import main
from mlgcn_lt.explain.pointing import point, summarize
from mlgcn_lt.training.train import plain_config

SIZE = 64
SMALL = {"n_train": 40, "n_dev": 12, "n_test": 16, "image_size": SIZE}


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    return syn.ensure(tmp_path_factory.mktemp("syn") / "data", **SMALL)


def build_model(root: Path, tmp_path: Path, *overrides: str):
    """An untrained MLGCNModule for the synthetic classes, built from the real configs."""
    cfg = compose_config(
        [f"data.root={root}", "model/label_embedding=random", "model.backbone.pretrained=none", *overrides],
        tmp_path / "run",
    )
    train = pd.read_csv(root / "train.csv")
    classes = list(syn.CXR_LT_2023_CLASSES)
    stats = LabelStats.from_labels(train[classes].to_numpy(np.float32), classes)
    info = {"format": "cxr_lt", "image_size": SIZE, "classes": classes}
    return instantiate(plain_config(cfg).model, stats=stats.to_dict(), data_info=info).eval()


def save(model, path: Path) -> Path:
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    return path


def plant_brightness_detector(model) -> None:
    """Trunk: 4x average pooling; each expert: channel 0 = brightness; every classifier reads channel 0 only."""
    net = model.net
    net.trunk = nn.AvgPool2d(4)
    for expert in net.experts:
        stage = nn.Conv2d(3, net.num_features, 1, bias=False)
        nn.init.zeros_(stage.weight)
        stage.weight.data[0] = 1.0
        expert.stage = nn.Sequential(stage, nn.ReLU())  # like a real stage: non-negative features
        expert.head.fc.weight.data.zero_()
        expert.head.fc.weight.data[:, 0] = 1.0
        expert.head.fc.bias.data.zero_()


def patch_image(row: int, col: int) -> torch.Tensor:
    img = torch.full((1, 1, SIZE, SIZE), 30, dtype=torch.uint8)
    img[..., row : row + 8, col : col + 8] = 250
    return img


@pytest.mark.parametrize("method", ["gcn_cam", "gradcam", "gradcam++"])
def test_maps_have_the_image_shape_and_peak_on_a_planted_cue(method, synthetic_root, tmp_path, hydra_cleanup):
    model = build_model(synthetic_root, tmp_path, "model/head=linear", "model.num_experts=2")
    plant_brightness_detector(model)
    for row, col in [(40, 12), (8, 48)]:
        maps = class_maps(model.net, patch_image(row, col), [0, 5], method)
        assert maps.shape == (1, 2, SIZE, SIZE) and torch.isfinite(maps).all()
        for k in range(2):
            r, c = np.unravel_index(int(maps[0, k].argmax()), (SIZE, SIZE))
            assert row <= r < row + 8 and col <= c < col + 8, (method, (r, c))


def test_gcn_cam_applies_the_attention_and_heads_without_a_classifier_matrix_point_to_gradcam(
    synthetic_root, tmp_path, hydra_cleanup
):
    model = build_model(synthetic_root, tmp_path, "model/attention=mha", "model.num_experts=2")
    images = patch_image(10, 10)
    maps = gcn_cam(model.net, images)
    assert maps.shape == (1, 26, SIZE, SIZE)
    # the map goes through each head's attention (mha: per-image classifiers (B, C, D))
    raw = model.net.experts[0].head.attention
    model.net.experts[0].head.attention = nn.Identity()
    with pytest.raises(TypeError):
        gcn_cam(model.net, images)  # Identity takes one argument: the attention really is applied
    model.net.experts[0].head.attention = raw
    csra = build_model(synthetic_root, tmp_path, "model/head=csra")
    with pytest.raises(ValueError, match="gradcam"):
        gcn_cam(csra.net, images)
    assert class_maps(csra.net, images, [1], "gradcam").shape == (1, 1, SIZE, SIZE)


def test_pointing_game_matches_a_hand_computed_example():
    cam = np.zeros((10, 10))
    cam[2, 3] = 1.0  # maximum at row 2, column 3
    hit = point(cam, [(2, 1, 3, 3)], "A")  # x 2..5, y 1..4 holds column 3, row 2; covers 9 of 100 pixels
    miss = point(cam, [(6, 6, 4, 4)], "A")  # 16 of 100 pixels
    other = point(cam, [(0, 0, 10, 5)], "B")  # the upper half
    assert (hit.hit, hit.chance, miss.hit, miss.chance) == (True, 0.09, False, 0.16)
    plateau = np.zeros((10, 10))
    plateau[6:, 6:] = 2.0  # a tied block: pointed at its centroid (row 7.5 -> 8, col 8), not its first pixel
    assert point(plateau, [(7, 7, 2, 2)], "A").hit and not point(plateau, [(6, 6, 1, 1)], "A").hit
    summary = summarize([hit, miss, other], ["B", "A"])
    assert summary["per_class"]["A"] == {"hit_rate": 0.5, "chance": pytest.approx(0.125), "n": 2}
    assert summary["per_class"]["B"] == {"hit_rate": 1.0, "chance": 0.5, "n": 1}
    assert list(summary["per_class"]) == ["B", "A"]
    assert summary["overall"] == {"hit_rate": pytest.approx(2 / 3), "chance": pytest.approx(0.75 / 3), "n": 3}


def test_nih_box_file_is_read_by_position(tmp_path):
    f = tmp_path / "BBox_List_2017.csv"
    f.write_text(
        "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
        "00013118_008.png,Atelectasis,225.08,547.01,86.77,79.18,,,\n"
        "00014716_007.png,Infiltrate,686.1,235.4,150.3,171.6,,,\n"
    )
    boxes = read_boxes(f)
    assert boxes[["image", "class"]].values.tolist() == [
        ["00013118_008.png", "Atelectasis"],
        ["00014716_007.png", "Infiltration"],
    ]
    assert boxes.iloc[0][["x", "y", "w", "h"]].tolist() == [225.08, 547.01, 86.77, 79.18]
    f.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\nimg.png,Mass,1,2,oops,4,,,\n")
    with pytest.raises(BoxError, match=r"line 2: column 'w'"):
        read_boxes(f)


@pytest.fixture(scope="module")
def checkpoint(synthetic_root, tmp_path_factory) -> Path:
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    tmp = tmp_path_factory.mktemp("ckpt")
    try:  # laid out like a run: <run>/config.yaml and <run>/checkpoints/model.ckpt
        model = build_model(synthetic_root, tmp, "model.num_experts=2", "data.num_workers=0")
        cfg = compose_config([f"data.root={synthetic_root}", "data.num_workers=0"], tmp / "run")
        (tmp / "run").mkdir(exist_ok=True)
        (tmp / "run" / "config.yaml").write_text(OmegaConf.to_yaml(plain_config(cfg)))
        return save(model, tmp / "run" / "checkpoints" / "model.ckpt")
    finally:
        GlobalHydra.instance().clear()


def test_cli_writes_overlays_sheets_and_the_pointing_game(checkpoint, synthetic_root, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--ckpt", str(checkpoint), "--csv", str(synthetic_root / "test.csv"), "--root", str(synthetic_root)]
    assert main([*args, "--limit", "4", "--top-k", "2", "--pointing-game", "--overlays", "2", "--out", str(out)]) == 0
    folders = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(folders) == 2  # overlays for the first 2 images only
    for folder in folders:
        pngs = sorted(p.name for p in folder.iterdir())
        assert "sheet.png" in pngs and len(pngs) == 3
        assert Image.open(folder / pngs[0]).size[0] > 100
    summary = json.loads((out / "pointing_game.json").read_text())
    test = pd.read_csv(synthetic_root / "test.csv").head(4)
    boxes = pd.read_csv(synthetic_root / "boxes.csv")
    boxes = boxes[boxes.dicom_id.isin(test.dicom_id)]
    positive = [test.set_index("dicom_id").loc[d, c] == 1 for d, c in zip(boxes.dicom_id, boxes["class"], strict=True)]
    assert summary["overall"]["n"] == sum(positive) > 0
    assert 0 <= summary["overall"]["hit_rate"] <= 1 and 0 < summary["overall"]["chance"] < 1
    assert "| **overall** |" in capsys.readouterr().out


def test_cli_explains_image_files_for_named_classes(checkpoint, synthetic_root, tmp_path):
    image = next((synthetic_root / "files").rglob("*.jpg"))
    out = tmp_path / "out"
    assert main(["--ckpt", str(checkpoint), str(image), "--classes", "Nodule,Mass", "--out", str(out)]) == 0
    assert sorted(p.name for p in (out / image.stem).iterdir()) == ["1_Nodule.png", "2_Mass.png", "sheet.png"]


def test_cli_errors_name_the_bad_input(checkpoint, tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    assert main(["--ckpt", str(checkpoint), str(bad), "--out", str(tmp_path / "o")]) == 2
    assert f"cannot decode image {bad}" in capsys.readouterr().err
    good = tmp_path / "ok.png"
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(good)
    assert main(["--ckpt", str(checkpoint), str(good), "--classes", "Nodules", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "['Nodules'] not in the checkpoint's classes" in err and "Nodule" in err
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}, "hyper_parameters": {"lr": 0.1}}, other)
    assert main(["--ckpt", str(other), str(good), "--out", str(tmp_path / "o")]) == 2
    assert f"{other}: not a checkpoint of an mlgcn_lt model" in capsys.readouterr().err
    text = tmp_path / "notes.ckpt"
    text.write_text("hello")
    assert main(["--ckpt", str(text), str(good), "--out", str(tmp_path / "o")]) == 2
    assert f"{text}: cannot be read as a PyTorch checkpoint" in capsys.readouterr().err


def test_cli_reads_a_split_of_the_runs_own_data_config(checkpoint, synthetic_root, tmp_path):
    out = tmp_path / "out"
    assert main(["--ckpt", str(checkpoint), "--split", "dev", "--limit", "2", "--top-k", "1", "--out", str(out)]) == 0
    val = pd.read_csv(synthetic_root / "development.csv").head(2)
    assert sorted(p.name for p in out.iterdir()) == sorted(val.dicom_id)
    assert main(["--ckpt", str(checkpoint), "--split", "dev", "--config", str(tmp_path / "no.yaml"), "--out", "x"]) == 2
