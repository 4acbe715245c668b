"""Backbone split, input normalisation, pooling, heads and experts: shapes, gradients, sharing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlgcn_lt.models.backbones import IMAGENET_MEAN, IMAGENET_STD, InputNormalizer, build_backbone
from mlgcn_lt.models.experts import MultiExpertNet
from mlgcn_lt.models.heads import GCNHead
from mlgcn_lt.models.label_embeddings import FileEmbedding, OneHotEmbedding, RandomEmbedding
from mlgcn_lt.models.pooling import AvgPool, MaxPool

C = 6


@pytest.mark.parametrize(
    ("name", "features"), [("resnet18", 512), ("resnet34", 512), ("resnet50", 2048), ("resnet101", 2048)]
)
def test_backbone_split_shapes(name, features):
    b = build_backbone(name, "none")
    x = torch.randn(1, 3, 64, 64)
    mid = b.trunk(x)
    assert mid.shape[1] == b.trunk_features and mid.shape[-1] == 4
    out = b.last_stage(mid)
    assert out.shape == (1, features, 2, 2) and b.num_features == features


def test_backbone_errors_are_clear(tmp_path):
    with pytest.raises(KeyError, match="known: .*resnet101"):
        build_backbone("resnet1000")
    with pytest.raises(FileNotFoundError, match="no such file"):
        build_backbone("resnet18", str(tmp_path / "missing.pth"))


def test_backbone_loads_a_local_state_dict(tmp_path):
    import torchvision

    ref = torchvision.models.resnet18(weights=None)
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    b = build_backbone("resnet18", str(tmp_path / "w.pth"))
    torch.testing.assert_close(b.trunk[0].weight, ref.conv1.weight)
    torch.testing.assert_close(b.last_stage[0].conv1.weight, ref.layer4[0].conv1.weight)
    torch.save({"conv1.weight": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="do not fit resnet18"):
        build_backbone("resnet18", str(tmp_path / "bad.pth"))


def test_imagenet_weights_offline_fail_with_instructions(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    for var in ("no_proxy", "NO_PROXY"):  # the download is attempted: through a proxy on a closed local port
        monkeypatch.delenv(var, raising=False)
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    with pytest.raises(FileNotFoundError, match="not available offline.*pretrained=none"):
        build_backbone("resnet101", "imagenet")


def test_input_normalizer_matches_imagenet_formula():
    x = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    out = InputNormalizer(3, "imagenet")(x)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(out, (x.float().expand(-1, 3, -1, -1) / 255 - mean) / std)
    torch.testing.assert_close(InputNormalizer(3, "unit")(x), x.float().expand(-1, 3, -1, -1) / 255)
    torch.testing.assert_close(InputNormalizer(3, "unit")(x.float() / 255), x.float().expand(-1, 3, -1, -1) / 255)


def test_max_and_avg_pooling():
    x = torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(MaxPool()(x), x.flatten(2).max(2).values)
    torch.testing.assert_close(AvgPool()(x), x.flatten(2).mean(2))


@pytest.mark.parametrize("embedding", ["random", "onehot", "file"])
def test_label_embeddings(stats, embedding, tmp_path):
    if embedding == "random":
        e = RandomEmbedding(dim=16, seed=3)
        v = e(stats)
        assert v.shape == (C, 16) and np.array_equal(v, RandomEmbedding(16, 3)(stats))
        assert not np.array_equal(v, RandomEmbedding(16, 4)(stats))
    elif embedding == "onehot":
        np.testing.assert_array_equal(OneHotEmbedding()(stats), np.eye(C))
    else:
        np.save(tmp_path / "v.npy", np.ones((C, 7), dtype=np.float32))
        assert FileEmbedding(str(tmp_path / "v.npy"))(stats).shape == (C, 7)
        np.save(tmp_path / "w.npy", np.ones((C + 1, 7), dtype=np.float32))
        with pytest.raises(ValueError, match=r"shape \(7, 7\), expected \(6, d\)"):
            FileEmbedding(str(tmp_path / "w.npy"))(stats)


def _net(stats, num_experts=1, init="pretrained_copy", ensemble="logits"):
    vectors = RandomEmbedding(32)(stats)
    return MultiExpertNet(
        build_backbone("resnet18"),
        lambda d: GCNHead(d, stats, vectors, MaxPool(), hidden=(64,)),
        num_experts=num_experts,
        init=init,
        ensemble=ensemble,
    )


@pytest.mark.parametrize("num_experts", [1, 3])
@pytest.mark.parametrize("ensemble", ["logits", "probs"])
def test_experts_shapes_and_every_parameter_gets_a_gradient(stats, num_experts, ensemble):
    net = _net(stats, num_experts, ensemble=ensemble)
    out = net(torch.randint(0, 256, (2, 1, 64, 64), dtype=torch.uint8))
    assert out.logits.shape == (2, C) and out.expert_logits.shape == (num_experts, 2, C)
    assert torch.isfinite(out.logits).all()
    if ensemble == "logits":
        torch.testing.assert_close(out.logits, out.expert_logits.mean(0))
    else:
        torch.testing.assert_close(torch.sigmoid(out.logits), torch.sigmoid(out.expert_logits).mean(0))
    out.logits.sum().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing


def test_trunk_runs_once_per_batch_and_experts_own_their_stage(stats):
    net = _net(stats, num_experts=4)
    calls = []
    net.trunk.register_forward_hook(lambda *a: calls.append(1))
    net(torch.zeros(2, 1, 64, 64, dtype=torch.uint8))
    assert len(calls) == 1
    stages = [e.stage for e in net.experts]
    assert len({id(s[0].conv1.weight) for s in stages}) == 4
    # pretrained_copy: identical initial weights; random: different
    assert torch.equal(stages[0][0].conv1.weight, stages[1][0].conv1.weight)
    rnd = _net(stats, num_experts=2, init="random")
    assert not torch.equal(rnd.experts[0].stage[0].conv1.weight, rnd.experts[1].stage[0].conv1.weight)
    with pytest.raises(ValueError, match="num_experts must be >= 1"):
        _net(stats, num_experts=0)
