"""The training step: activation checkpointing changes nothing but memory; no host-device sync per step."""

from __future__ import annotations

import copy
import os
import traceback

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from mlgcn_lt.data.stats import LabelStats
from mlgcn_lt.models.backbones import build_backbone
from mlgcn_lt.models.experts import MultiExpertNet, checkpoint_segments
from mlgcn_lt.models.heads import GCNHead
from mlgcn_lt.models.pooling import MaxPool
from mlgcn_lt.training.callbacks.progress import ProgressBar
from mlgcn_lt.training.train import build, plain_config

C = 5


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: several times faster than two on a shared 2-core machine (no spinning workers)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _net(checkpointing: bool) -> MultiExpertNet:
    labels = (np.random.default_rng(0).random((50, C)) < 0.3).astype(np.float32)
    stats = LabelStats.from_labels(labels, [f"c{i}" for i in range(C)])
    vectors = np.random.default_rng(1).normal(size=(C, 8)).astype(np.float32)
    torch.manual_seed(0)
    return MultiExpertNet(
        build_backbone("resnet18"),
        lambda d: GCNHead(in_features=d, stats=stats, label_vectors=vectors, pooling=MaxPool()),
        num_experts=2,
        activation_checkpointing=checkpointing,
    )


def test_checkpoint_segments_are_the_stem_and_every_block():
    net = _net(False)
    units = checkpoint_segments(net.trunk)
    assert len(units) == 1 + 2 + 2 + 2  # stem (conv, bn, relu, maxpool) + resnet18's blocks of layer1..3
    assert isinstance(units[0][0], torch.nn.Conv2d) and len(checkpoint_segments(net.experts[0].stage)) == 2


@pytest.mark.slow  # trains through train() / fit
def test_activation_checkpointing_keeps_outputs_gradients_and_running_stats():
    plain = _net(False)
    ckpt = copy.deepcopy(plain)
    ckpt.activation_checkpointing = True
    images = torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8)
    outs = []
    for net in (plain, ckpt):
        net.train()
        out = net(images)
        (out.logits.square().mean() + out.expert_logits.mean()).backward()
        outs.append(out)
    torch.testing.assert_close(outs[0].logits, outs[1].logits)
    torch.testing.assert_close(outs[0].expert_logits, outs[1].expert_logits)
    grads = [{n: p.grad for n, p in net.named_parameters() if p.grad is not None} for net in (plain, ckpt)]
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == len(list(plain.parameters()))
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)
    # the recomputation must not update BatchNorm statistics a second time
    for (name, a), (_, b) in zip(plain.named_buffers(), ckpt.named_buffers(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    # evaluation and no-grad forwards never checkpoint
    ckpt.eval()
    with torch.no_grad():
        torch.testing.assert_close(ckpt(images).logits, plain.eval()(images).logits)


def test_module_builds_checkpointed_net_from_config(tiny_cfg):
    _, model, _ = build(plain_config(tiny_cfg("model.activation_checkpointing=true")))
    assert model.net.activation_checkpointing


#: Conversions there read host tensors on a GPU too: Adam's step counters, the loader's random parameters.
_HOST_SIDE = (f"torch{os.sep}optim{os.sep}", f"torch{os.sep}utils{os.sep}data{os.sep}", f"mlgcn_lt{os.sep}data{os.sep}")


@pytest.fixture
def count_host_reads(monkeypatch):
    """Counts tensor → Python number conversions (a device sync each on a GPU) while ``counting['on']``."""
    counting = {"on": False, "n": 0}
    for name in ("item", "__float__", "tolist"):
        original = getattr(torch.Tensor, name)

        def wrapped(self, *a, _original=original, **k):
            if counting["on"] and not any(s in f.filename for f in traceback.extract_stack() for s in _HOST_SIDE):
                counting["n"] += 1
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, wrapped)
    return counting


@pytest.mark.slow  # trains through train() / fit
def test_training_steps_read_values_to_the_host_only_at_logging_steps(tiny_cfg, tmp_path, count_host_reads):
    dm, model, _ = build(plain_config(tiny_cfg("data.batch_size=4", "data.num_workers=0")))
    steps = len(dm.train_dataloader())
    assert steps == len(dm.tables["train"]) // 4 == 8  # 40 rows of train.csv minus the carved val split (6)

    class Window(L.Callback):
        def on_train_batch_start(self, *args) -> None:
            count_host_reads["on"] = True

        def on_train_epoch_end(self, *args) -> None:
            count_host_reads["on"] = False

    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        log_every_n_steps=5,
        logger=CSVLogger(tmp_path),
        callbacks=[Window(), ProgressBar(refresh_rate=5)],
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(model, train_dataloaders=dm.train_dataloader())
    # two logger writes and two progress-bar refreshes in 10 steps; `prog_bar=True, on_step=True` gave >= 10
    assert count_host_reads["n"] <= 2 * (steps // 5) + 1, count_host_reads["n"]
    assert "train/loss_step" in trainer.logged_metrics
