"""Experts: the release's narrow stage (expert_width=512) on resnet18 and resnet50."""

from __future__ import annotations

import pytest
import torch

from mlgcn_lt.models.backbones import build_backbone
from mlgcn_lt.models.experts import MultiExpertNet
from mlgcn_lt.models.heads import GCNHead
from mlgcn_lt.models.label_embeddings import RandomEmbedding
from mlgcn_lt.models.pooling import MaxPool

C = 5  # classes of the `stats` fixture (tests/conftest.py)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_narrow_experts_output_512_channels(stats, name):
    vectors = RandomEmbedding(16)(stats)
    net = MultiExpertNet(
        build_backbone(name),
        lambda d: GCNHead(d, stats, vectors, MaxPool(), hidden=(32,)),
        num_experts=2,
        init="random",
        width=512,
    )
    assert net.num_features == 512
    out = net(torch.zeros(1, 1, 64, 64, dtype=torch.uint8))
    assert out.expert_logits.shape == (2, 1, 5)
    assert net.experts[0].stage(torch.zeros(1, build_backbone(name).trunk_features, 4, 4)).shape[1] == 512
    if name == "resnet50":
        with pytest.raises(ValueError, match="expert_init=random"):
            MultiExpertNet(build_backbone(name), lambda d: GCNHead(d, stats, vectors, MaxPool()), width=512)
