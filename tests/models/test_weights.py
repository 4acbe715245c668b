"""ImageNet weights as a cluster gets them: the torch hub cache, else one download per node, else a clear message."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest
import torch
import torchvision

from mlgcn_lt.models import backbones
from mlgcn_lt.models.backbones import WeightsUnavailable, build_backbone


@pytest.fixture
def hub(monkeypatch, tmp_path) -> Path:
    """An empty torch hub directory."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path / "hub" / "checkpoints"


@pytest.fixture
def no_network(monkeypatch):
    """Every HTTP(S) request goes to a proxy on a closed local port: a real download attempt that fails."""
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")


def test_offline_download_fails_with_instructions(hub, no_network):
    with pytest.raises(WeightsUnavailable, match=r"could not be downloaded .*resnet18-f37072fd\.pth.*pretrained=none"):
        build_backbone("resnet18", "imagenet")
    assert not any(p.suffix == ".pth" for p in hub.iterdir())  # no partial weights file left behind


def test_offline_fallback_to_random_init_warns(hub, no_network, caplog):
    with caplog.at_level(logging.WARNING, logger="mlgcn_lt.models.backbones"):
        split = build_backbone("resnet18", "imagenet", if_unavailable="random")
    assert split.trunk[0].weight.shape == (64, 3, 7, 7)
    assert "if_unavailable=random: resnet18 starts from a RANDOM init" in caplog.text


def _fake_download(calls: list[str], delay: float = 0.5):
    """Stands in for the network: writes torchvision's resnet18 layout with recognisable values, slowly."""

    def download(url: str, dst: Path) -> None:
        calls.append(url)
        time.sleep(delay)  # long enough for the other "rank" to reach the lock
        state = {k: torch.full_like(v, 0.5) for k, v in torchvision.models.resnet18().state_dict().items()}
        tmp = dst.with_name(dst.name + ".partial")
        torch.save(state, tmp)
        tmp.replace(dst)

    return download


def test_missing_weights_are_downloaded_once_for_concurrent_ranks(hub, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(backbones, "_download", _fake_download(calls))
    results: dict[int, backbones.TrunkSplit] = {}
    errors: list[BaseException] = []

    def rank(r: int) -> None:
        try:
            results[r] = build_backbone("resnet18", "imagenet")
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert calls == [torchvision.models.ResNet18_Weights.DEFAULT.url]  # one download for both ranks
    assert (hub / "resnet18-f37072fd.pth").is_file()
    for split in results.values():
        assert torch.all(split.trunk[0].weight == 0.5) and torch.all(split.last_stage[0].conv1.weight == 0.5)
    build_backbone("resnet18", "imagenet")  # now from the cache
    assert len(calls) == 1


def test_bad_if_unavailable_value_is_named():
    with pytest.raises(ValueError, match="if_unavailable='maybe'"):
        build_backbone("resnet18", "imagenet", if_unavailable="maybe")
