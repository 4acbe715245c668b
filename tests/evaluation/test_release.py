"""The authors' release: an imported release checkpoint predicts what the release's own forward pass predicts.

``ReleaseNet`` below restates the release's model class (lisaseo9704/2023_ICCVW_CVAMD_NCIA500, models/ml_gcn_me.py)
in plain torch, written for this test from its structure: same module names (so the same ``state_dict`` keys), same
forward. It is saved the way the release's engine saves (``{'state_dict': ..., 'epoch': ..., 'best_score': ...}``)
with a pickled (C, 300) label-vector file, imported, and run through ``python -m mlgcn_lt.submit``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from helpers import cxr_lt_frame
from mlgcn_lt.data.classes import CXR_LT_2023_CLASSES
from mlgcn_lt.evaluation.import_release import ReleaseImportError, import_release
from mlgcn_lt.evaluation.import_release import main as import_main
from mlgcn_lt.evaluation.submit import main as submit_main


class NarrowBottleneck(nn.Module):
    """1x1 → 3x3 (stride here) → 1x1, no channel expansion, BatchNorm after each, residual, ReLU."""

    def __init__(self, cin: int, width: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class GraphLayer(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cin, cout).uniform_(-(cout**-0.5), cout**-0.5))

    def forward(self, h: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        return adj @ (h @ self.weight)


class TwoLayerGCN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gc1, self.gc2 = GraphLayer(300, 1024), GraphLayer(1024, 512)
        self.relu = nn.LeakyReLU(0.2)

    def forward(self, h: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        return self.gc2(self.relu(self.gc1(h, adj)), adj)


def lse_pool(x: torch.Tensor, gamma: float) -> torch.Tensor:
    """(B, D, H, W) → (B, D): m + log(mean(exp(γ (x − m)))) / γ, m the spatial max."""
    m = x.amax(dim=(2, 3), keepdim=True)
    return (m + torch.log(torch.exp(gamma * (x - m)).mean(dim=(2, 3), keepdim=True)) / gamma).flatten(1)


class ReleaseNet(nn.Module):
    def __init__(self, num_classes: int, adjacency: torch.Tensor, num_experts: int = 4) -> None:
        super().__init__()
        r = torchvision.models.resnet101(weights=None)
        self.features = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1, r.layer2, r.layer3)
        self.layer4s = nn.ModuleList()
        for _ in range(num_experts):
            down = nn.Sequential(nn.Conv2d(1024, 512, 1, stride=2, bias=False), nn.BatchNorm2d(512))
            blocks = [NarrowBottleneck(1024, 512, 2, down), NarrowBottleneck(512, 512), NarrowBottleneck(512, 512)]
            self.layer4s.append(nn.Sequential(*blocks))
        self.experts = nn.ModuleList(TwoLayerGCN() for _ in range(num_experts))
        self.A = nn.Parameter(adjacency.clone().float())
        self.attention = nn.TransformerEncoderLayer(d_model=512, nhead=8)
        self.transformer_encoder = nn.TransformerEncoder(self.attention, num_layers=1, enable_nested_tensor=False)

    def forward(self, images: torch.Tensor, label_vectors: torch.Tensor) -> torch.Tensor:
        f = self.features(images)
        d = self.A.sum(1).pow(-0.5)
        adj = ((self.A * d[None, :]).t() * d[None, :]).detach()  # (A D)ᵀ D
        outs = []
        for stage, gcn in zip(self.layer4s, self.experts, strict=True):
            v = lse_pool(stage(f), 0.5)  # (B, 512)
            w = gcn(label_vectors, adj)  # (C, 512)
            v = self.transformer_encoder(v.unsqueeze(0)).squeeze(0)  # sequence length 1, batch B
            w = self.transformer_encoder(w.unsqueeze(0)).squeeze(0)  # sequence length 1, batch C
            outs.append(v @ w.t())
        return torch.stack(outs, 1).mean(1)


def _randomize(model: nn.Module) -> None:
    """Non-trivial BatchNorm statistics and affine terms (a wrong mapping must show), moderate logits."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0.0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.0)
            m.bias.data.normal_(0.0, 0.1)
    for layer in (model.attention, model.transformer_encoder.layers[0]):
        layer.norm2.weight.data.uniform_(0.1, 0.3)
        layer.norm2.bias.data.normal_(0.0, 0.05)


def _release_adjacency(c: int, gen: torch.Generator) -> torch.Tensor:
    """A release-form stored A: binary edges re-weighted by column sums × 0.25, plus the identity (asymmetric)."""
    edges = (torch.rand(c, c, generator=gen) < 0.3).double()
    edges.fill_diagonal_(0.0)
    return edges * 0.25 / (edges.sum(0, keepdim=True) + 1e-6) + torch.eye(c, dtype=torch.float64)


@pytest.fixture(scope="module")
def release_files(tmp_path_factory):
    """A release-format checkpoint + label vectors, the reference model, and 3 gray 64 px PNGs with their CSV."""
    tmp = tmp_path_factory.mktemp("release")
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    c = len(CXR_LT_2023_CLASSES)
    model = ReleaseNet(c, _release_adjacency(c, gen))
    _randomize(model)
    model.eval()
    vectors = torch.randn(c, 300, generator=gen).numpy().astype(np.float32)
    torch.save(
        {"epoch": 3, "arch": None, "state_dict": model.state_dict(), "best_score": torch.tensor(0.25)},
        tmp / "model_best.pth.tar",
    )
    with open(tmp / "glove.pkl", "wb") as f:
        pickle.dump(vectors, f)
    frame = cxr_lt_frame(3, seed=7)
    rng = np.random.default_rng(0)
    for rel in frame["path"]:
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        png = str(tmp / rel).replace(".jpg", ".png")
        Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8), mode="L").save(png)
    frame["path"] = frame["path"].str.replace(".jpg", ".png")
    frame[list(frame.columns[:6])].to_csv(tmp / "test.csv", index=False)
    return tmp, model, vectors, frame


def test_imported_release_checkpoint_submits_what_the_release_predicts(release_files):
    tmp, model, vectors, frame = release_files
    assert (
        import_main(
            [
                str(tmp / "model_best.pth.tar"),
                "--label-vectors",
                str(tmp / "glove.pkl"),
                "--out",
                str(tmp / "release.ckpt"),
            ]
        )
        == 0
    )
    # ``python -m mlgcn_lt.submit`` in this process (the module's main; no second interpreter start-up).
    args = [
        "--ckpt",
        str(tmp / "release.ckpt"),
        "--csv",
        str(tmp / "test.csv"),
        "--root",
        str(tmp),
        "--out",
        str(tmp / "sub.csv"),
        "--image-size",
        "64",
    ]
    assert submit_main(args) == 0
    sub = pd.read_csv(tmp / "sub.csv")
    # The release's own input: cv2.IMREAD_COLOR (3 equal channels for a gray image) / 255, no mean / std.
    pixels = [cv2.imread(str(tmp / p), cv2.IMREAD_COLOR) for p in frame["path"]]
    x = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float().div(255.0)
    with torch.no_grad():
        ref = torch.sigmoid(model(x, torch.from_numpy(vectors))).numpy()
    got = sub[list(CXR_LT_2023_CLASSES)].to_numpy()
    assert list(sub["dicom_id"]) == list(frame["dicom_id"])
    assert ref.std() > 0.02 and 0.02 < ref.mean() < 0.98  # probabilities that are not all saturated
    assert np.abs(got - ref).max() < 1e-4


def test_imported_checkpoint_is_the_release_faithful_model(release_files):
    from mlgcn_lt.evaluation.predict import load_checkpoint

    tmp, model, _, _ = release_files
    out = import_release(tmp / "model_best.pth.tar", tmp / "glove.pkl", tmp / "again.ckpt")
    m = load_checkpoint(out, CXR_LT_2023_CLASSES)
    hp = m.hparams
    assert hp.num_experts == 4 and hp.expert_width == 512 and hp.expert_init == "random" and hp.share_attention
    assert hp.input_norm == "unit" and hp.head["form"] == "release" and hp.pooling["gamma"] == 0.5
    assert hp.backbone["name"] == "resnet101" and hp.data_info["image_size"] == 1024
    heads = m.net.heads()
    assert all(h.attention is heads[0].attention for h in heads)  # one encoder layer for all experts
    torch.testing.assert_close(m.net.trunk[0].weight, model.features[0].weight)


def _save_state(path: Path, state: dict) -> Path:
    torch.save({"state_dict": state}, path)
    return path


def test_unknown_and_missing_release_keys_are_named(release_files, tmp_path):
    tmp, model, _, _ = release_files
    state = dict(model.state_dict())
    extra = _save_state(tmp_path / "extra.pth", {**state, "classifier.weight": torch.zeros(2)})
    with pytest.raises(ReleaseImportError, match="classifier.weight"):
        import_release(extra, tmp / "glove.pkl", tmp_path / "x.ckpt")
    gone = {k: v for k, v in state.items() if k != "layer4s.2.1.bn2.running_var"}
    with pytest.raises(ReleaseImportError, match=r"missing keys \['layer4s\.2\.1\.bn2\.running_var'\]"):
        import_release(_save_state(tmp_path / "gone.pth", gone), tmp / "glove.pkl", tmp_path / "x.ckpt")
    with open(tmp_path / "short.pkl", "wb") as f:
        pickle.dump(np.zeros((5, 300), np.float32), f)
    with pytest.raises(ReleaseImportError, match=r"short.pkl: label vectors of shape \(5, 300\), expected \(26, d\)"):
        import_release(tmp / "model_best.pth.tar", tmp_path / "short.pkl", tmp_path / "x.ckpt")
    assert not (tmp_path / "x.ckpt").exists()


def test_import_release_help(capsys):
    with pytest.raises(SystemExit) as done:
        import_main(["--help"])
    assert done.value.code == 0 and "--label-vectors" in capsys.readouterr().out


# ---------------------------------------------------------------- the row and its augmentation
def _release_reference(img: np.ndarray, mode: int, w: float = 0.3) -> np.ndarray:
    """The release's 12 modes on a 3-channel uint8 image (float for 10 / 11), restated with numpy and cv2."""
    turn = {1: 1, 3: 3, 4: 2, 5: 1, 6: 2, 7: 3}
    if mode == 0:
        return img
    if mode < 8:
        out = np.rot90(img, k=turn.get(mode, 0))
        return np.flipud(out) if mode in (1, 2, 4, 7) else out
    if mode < 10:
        m = cv2.getRotationMatrix2D((img.shape[1] / 2, img.shape[0] / 2), 10, 1.0)
        return cv2.warpAffine(img, m, (0, 0))
    return (w if mode == 10 else 1 + w) * img.astype(np.float64)


@pytest.mark.parametrize("mode", range(12))
def test_release_augmentation_modes_match_the_release(mode):
    from mlgcn_lt.data.images import release_augment

    rng = np.random.default_rng(mode)
    for shape in ((9, 9), (6, 10)):
        gray = rng.integers(0, 256, shape, dtype=np.uint8)
        color = np.repeat(gray[:, :, None], 3, axis=2)  # what cv2.IMREAD_COLOR gives for a gray image
        ref = _release_reference(color, mode)[:, :, 0]
        got = release_augment(gray, mode, factor=0.3)
        assert got.dtype == np.uint8 and got.shape == ref.shape
        if mode < 10:
            assert np.array_equal(got, ref)
        else:  # the release keeps the float product (clipped to [0, 1] after / 255); here it is rounded
            assert np.abs(got - np.clip(ref, 0, 255)).max() <= 0.5


def test_release_augmentation_draws_all_12_modes_from_torch():
    from mlgcn_lt.data.images import AugmentConfig, AugmentKind, build_transform

    transform = build_transform(AugmentConfig(kind=AugmentKind.release))
    img = np.arange(16, dtype=np.uint8).reshape(4, 4) * 10
    torch.manual_seed(0)
    outs = {transform(img).numpy().tobytes() for _ in range(400)}
    # 8 symmetries + 1 rotation (modes 8, 9) + a continuum of intensity scalings: more than 9 distinct images
    assert len(outs) > 9
    torch.manual_seed(0)
    again = {transform(img).numpy().tobytes() for _ in range(400)}
    assert outs == again
    assert torch.equal(build_transform(AugmentConfig(kind=AugmentKind.none))(img), torch.from_numpy(img)[None])


def test_release_faithful_row_sets_the_release_recipe(tiny_cfg):
    cfg = tiny_cfg("+experiment=release_faithful")
    m, d, t = cfg.model, cfg.data, cfg.trainer
    assert m.backbone.name == "resnet101" and m.backbone.pretrained == "imagenet"
    assert m.backbone.if_unavailable == "random"
    assert m.num_experts == 4 and m.expert_init == "random" and m.expert_width == 512 and m.share_attention
    assert m.input_norm == "unit" and m.ensemble == "logits" and m.pooling.gamma == 0.5
    assert m.attention._target_.endswith("PerVectorAttention") and m.attention.heads == 8
    assert m.head.form == "release" and m.head.threshold == 0.4 and m.head.reweight == 0.25
    assert list(m.head.hidden) == [1024] and m.head.negative_slope == 0.2 and m.label_embedding.dim == 300
    e = m.label_embedding
    assert (e.diagonal, e.optimizer, e.iterations, e.lr, e.x_max, e.alpha) == (
        "counts",
        "adagrad",
        10000,
        0.05,
        100,
        0.75,
    )
    assert m.loss._target_.endswith("SoftMarginLoss") and m.loss.apply_to == "ensemble"
    assert m.optimizer.lr == 1e-4 and list(m.optimizer.betas) == [0.9, 0.99] and m.optimizer.weight_decay == 0
    assert d.batch_size == 4 and d.max_epochs == 30 and d.augment.kind == "release"
    assert t.gradient_clip_val == 10.0 and t.gradient_clip_algorithm == "norm"


def test_augment_kind_is_schema_checked(tmp_path, hydra_cleanup):
    from helpers import compose_config

    assert compose_config(["data.augment.kind=none"], tmp_path).data.augment.kind == "none"
    with pytest.raises(Exception, match="bogus"):
        compose_config(["data.augment.kind=bogus"], tmp_path)


@pytest.mark.slow
def test_eval_py_scores_an_imported_checkpoint(release_files, tmp_path):
    import os
    import subprocess
    import sys

    from helpers import write_cxr_lt_dir

    tmp, _, _, _ = release_files
    root = write_cxr_lt_dir(tmp_path / "data", sizes={"train": 30, "development": 8, "test": 8})
    ckpt = import_release(tmp / "model_best.pth.tar", tmp / "glove.pkl", tmp_path / "r.ckpt", image_size=32)
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo), "MLGCN_LOG_DIR": str(tmp_path / "logs")}
    cmd = [
        sys.executable,
        str(repo / "eval.py"),
        f"ckpt_path={ckpt}",
        "data=cxr_lt",
        f"data.root={root}",
        "data.image_size=32",
        "data.num_workers=0",
        "data.synthetic=null",
        "trainer=cpu",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "'test/mAP'" in done.stdout + done.stderr


def test_release_augmentation_reaches_the_training_set_only(tiny_cxr_lt):
    from omegaconf import OmegaConf

    from helpers import make_datamodule

    dm = make_datamodule(tiny_cxr_lt, augment=OmegaConf.create({"kind": "release"}))  # as Hydra passes it
    dm.setup("fit")
    assert dm.dataset("train").transform.augment.kind == "release"
    assert dm.dataset("val").transform.augment is None
    torch.manual_seed(3)
    seen = {dm.dataset("train")[0]["image"].numpy().tobytes() for _ in range(60)}
    assert len(seen) > 9  # symmetries, the rotation and intensity scalings of one image


def test_checkpoint_without_a_or_experts_is_refused(release_files, tmp_path):
    tmp, model, _, _ = release_files
    state = dict(model.state_dict())
    no_a = _save_state(tmp_path / "no_a.pth", {k: v for k, v in state.items() if k != "A"})
    with pytest.raises(ReleaseImportError, match="no square key 'A'"):
        import_release(no_a, tmp / "glove.pkl", tmp_path / "x.ckpt")
    no_gcn = {k: v for k, v in state.items() if not k.startswith("experts.3.")}
    with pytest.raises(ReleaseImportError, match=r"experts.N.gc1/gc2 for N in \[0, 1, 2\]"):
        import_release(_save_state(tmp_path / "no_gcn.pth", no_gcn), tmp / "glove.pkl", tmp_path / "x.ckpt")
