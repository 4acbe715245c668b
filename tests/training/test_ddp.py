"""Under DDP (2 CPU processes, gloo): sampler shards, metric sync without double counting, ddp_sim training."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from helpers import TINY_OVERRIDES, compose_config
from mlgcn_lt.config import PROJECT_ROOT
from mlgcn_lt.config.groups import config_options, option_target
from mlgcn_lt.data.samplers import EvalShardSampler
from mlgcn_lt.evaluation.evaluate import evaluate
from mlgcn_lt.evaluation.metrics import MultilabelMetrics, compute_metrics

WORLD = 2
LABELS = (np.random.default_rng(0).random((53, 6)) < np.linspace(0.5, 0.05, 6)).astype(np.float32)
PROBS = np.random.default_rng(1).random((41, 6)).astype(np.float32)
TARGETS = (np.random.default_rng(2).random((41, 6)) < 0.3).astype(np.float32)


def _worker(rank: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    try:
        result: dict = {"samplers": {}}
        for name in config_options("data/sampler"):
            cls = option_target("data/sampler", name)
            sampler = cls(LABELS, num_samples=37, seed=3)  # topology read from torch.distributed
            first = list(sampler)
            sampler.set_epoch(1)
            result["samplers"][name] = (first, list(sampler), len(sampler))
        result["eval"] = list(EvalShardSampler(41))
        metric = MultilabelMetrics([f"c{i}" for i in range(6)])
        rows = np.array(list(EvalShardSampler(41)))
        rows = np.concatenate([rows, rows[:1]])  # a padded duplicate, as a DistributedSampler would add
        metric.update(torch.from_numpy(PROBS[rows]), torch.from_numpy(TARGETS[rows]), torch.from_numpy(rows))
        result["metrics"] = metric.compute()
        torch.save(result, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    tmp = tmp_path_factory.mktemp("ddp")
    mp.start_processes(_worker, args=(f"file://{tmp}/init", str(tmp)), nprocs=WORLD, start_method="spawn")
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.parametrize("name", config_options("data/sampler"))
def test_every_sampler_shards_disjointly_and_covers_the_global_sequence(ranks, name):
    single = option_target("data/sampler", name)(LABELS, num_samples=37, seed=3)
    for epoch in (0, 1):
        single.set_epoch(epoch)
        expected = single.global_indices().tolist()
        shards = [r["samplers"][name][epoch] for r in ranks]
        assert len(shards[0]) == len(shards[1]) == ranks[0]["samplers"][name][2] == 19
        interleaved = [shards[r][i] for i in range(19) for r in range(WORLD)]
        assert interleaved[:37] == expected  # rank r holds positions r, r+2, ...: disjoint, covering
        assert interleaved[37:] == expected[:1]  # padding wraps around
    assert ranks[0]["samplers"][name][0] != ranks[0]["samplers"][name][1]  # set_epoch changes the draw


def test_eval_shards_have_no_padding(ranks):
    a, b = ranks[0]["eval"], ranks[1]["eval"]
    assert sorted(a + b) == list(range(41)) and not set(a) & set(b)


def test_metrics_are_over_the_whole_split_on_every_rank(ranks):
    expected = compute_metrics(PROBS, TARGETS, [f"c{i}" for i in range(6)])
    for r in ranks:
        for key, value in expected.items():
            assert r["metrics"][key] == pytest.approx(value, abs=1e-6, nan_ok=True), key


@pytest.mark.slow
def test_ddp_sim_training_validates_like_a_single_process(tiny_cxr_lt, tmp_path, hydra_cleanup):
    """Two gloo processes train; the best checkpoint's val metrics equal a single-process evaluation of it."""
    cmd = [
        sys.executable,
        "train.py",
        f"data.root={tiny_cxr_lt}",
        *TINY_OVERRIDES,
        "trainer=ddp_sim",
        "trainer.max_epochs=2",
        "callbacks.early_stopping=null",
        f"paths.log_dir={tmp_path}/out",
        "model/label_embedding=random",
    ]
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = (tmp_path / "out" / "train" / "runs").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    cfg = compose_config(
        [f"data.root={tiny_cxr_lt}", *TINY_OVERRIDES, f"ckpt_path={metrics['best_checkpoint']}", "split=val"],
        tmp_path / "eval",
        config_name="eval",
    )
    single = evaluate(cfg)
    for key in ("mAP", "mAUC", "mF1", "mAP_head", "mAP_middle", "mAP_tail", "n_classes_without_positives"):
        assert single[f"val/{key}"] == pytest.approx(metrics[f"val/{key}"], abs=1e-5), key
    test = pd_read(run / "predictions_test.csv")
    assert len(test) == 16  # every test row exactly once, though two ranks each saw half


def pd_read(path: Path):
    import pandas as pd

    return pd.read_csv(path)
