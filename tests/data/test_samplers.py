"""Samplers (paper Section 3.2): determinism per (seed, epoch), epoch length, DDP shards, balance, Table 5 report."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
from hydra.utils import instantiate

from helpers import compose_config, cxr_lt_frame
from mlgcn_lt.config.groups import config_options, option_target
from mlgcn_lt.data.sampler_report import main as report_main
from mlgcn_lt.data.sampler_report import sampler_label_distribution
from mlgcn_lt.data.samplers import (
    ClassAwareSampler,
    CycleClassSampler,
    LeastSampledClassSampler,
    RandomSampler,
    RepeatFactorSampler,
)

LABELS = (np.random.default_rng(0).random((37, 5)) < 0.3).astype(np.float32)


def test_random_sampler_is_a_seeded_permutation():
    s = RandomSampler(LABELS, seed=1)
    first = list(s)
    assert sorted(first) == list(range(37)) and len(s) == 37
    assert list(RandomSampler(LABELS, seed=1)) == first
    s.set_epoch(1)
    assert list(s) != first and sorted(s) == list(range(37))
    assert list(RandomSampler(LABELS, seed=2)) != first


def test_epoch_length_is_configurable():
    s = RandomSampler(LABELS, num_samples=100)
    idx = list(s)
    assert len(idx) == 100 == len(s)
    assert set(idx) == set(range(37))
    with pytest.raises(ValueError, match="num_samples must be positive"):
        RandomSampler(LABELS, num_samples=0)


@pytest.mark.parametrize("world", [2, 3])
def test_shards_are_disjoint_and_cover_the_global_sequence(world):
    shards = [list(RandomSampler(LABELS, seed=5, num_replicas=world, rank=r)) for r in range(world)]
    assert len({len(s) for s in shards}) == 1
    seq = RandomSampler(LABELS, seed=5).global_indices().tolist()
    merged = [shards[r][i] for i in range(len(shards[0])) for r in range(world)]
    assert merged[: len(seq)] == seq  # interleaved shards rebuild the sequence; the rest is wrap-around padding


# --------------------------------------------------------------------------- every sampler (paper Section 3.2)

NAMES = config_options("data/sampler")  # the config group is the registry
LABEL_AWARE = [n for n in NAMES if n != "random"]


def long_tail_labels(n: int = 3000, c: int = 8, seed: int = 0, decay: float = 0.55) -> np.ndarray:
    """Long-tailed labels whose rarer classes co-occur with the head class 0 (the situation of Eq. 1)."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, c)) < 0.4 * decay ** np.arange(c)).astype(np.float32)
    labels[:, 0] = np.maximum(labels[:, 0], (labels[:, 1:].sum(1) > 0) & (rng.random(n) < 0.8))
    return labels


def test_every_class_of_the_fixture_is_positive():
    assert (LABELS.sum(0) > 0).all()


@pytest.mark.parametrize("name", NAMES)
def test_length_and_valid_indices(name):
    s = option_target("data/sampler", name)(LABELS, num_samples=53, seed=1)
    idx = list(s)
    assert len(idx) == 53 == len(s) and all(type(i) is int and 0 <= i < len(LABELS) for i in idx)
    assert len(option_target("data/sampler", name)(LABELS, seed=1)) == len(LABELS)  # default epoch: the dataset size


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_per_seed_and_epoch(name):
    cls = option_target("data/sampler", name)
    a, b = cls(LABELS, num_samples=60, seed=3), cls(LABELS, num_samples=60, seed=3)
    first = list(a)
    assert list(a) == first == list(b)
    a.set_epoch(1)
    second = list(a)
    assert second != first
    b.set_epoch(1)
    assert list(b) == second
    assert list(cls(LABELS, num_samples=60, seed=4)) != first


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("name", NAMES)
def test_every_sampler_shards_disjoint_and_covering(name, world):
    cls = option_target("data/sampler", name)
    shards = [list(cls(LABELS, num_samples=41, seed=5, num_replicas=world, rank=r)) for r in range(world)]
    assert len({len(s) for s in shards}) == 1
    seq = cls(LABELS, num_samples=41, seed=5).global_indices().tolist()
    merged = [shards[r][i] for i in range(len(shards[0])) for r in range(world)]
    assert merged[: len(seq)] == seq and merged[len(seq) :] == seq[: len(merged) - len(seq)]


@pytest.mark.parametrize("name", LABEL_AWARE)
def test_a_class_without_positives_is_skipped_with_one_warning(name):
    labels = LABELS.copy()
    labels[:, 2] = 0.0
    labels[::3, 2] = np.nan
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = option_target("data/sampler", name)(labels, num_samples=40, seed=0)
        for epoch in range(3):
            s.set_epoch(epoch)
            assert len(list(s)) == 40
    msgs = [str(w.message) for w in caught]
    assert len(msgs) == 1 and "[2]" in msgs[0] and "skipped" in msgs[0]


@pytest.mark.parametrize("name", LABEL_AWARE)
def test_labels_without_any_positive_are_an_error(name):
    labels = np.where(np.arange(5) % 2, 0.0, np.nan) * np.ones((37, 1))
    with pytest.raises(ValueError, match="no class has a positive image"):
        option_target("data/sampler", name)(labels)
    assert len(list(RandomSampler(labels))) == 37  # plain shuffling does not look at labels


@pytest.mark.parametrize("name", ["cycle", "class_aware", "least_sampled"])
def test_class_samplers_never_draw_images_without_positives(name):
    labels = LABELS.copy()
    labels[:10] = 0.0
    labels[10:15] = np.nan
    drawn = set(option_target("data/sampler", name)(labels, num_samples=500, seed=0))
    assert drawn <= set(np.flatnonzero((labels == 1).any(1)).tolist()) and min(drawn) >= 15
    assert len(drawn) > 5


# --------------------------------------------------------------------------- closed-form / statistical checks


def test_cycle_visits_classes_in_turn():
    c, k = LABELS.shape[1], 7
    s = CycleClassSampler(LABELS, num_samples=k * c, seed=2)
    idx, visited = s.draw_with_classes(s.epoch_rng())
    assert (idx == s.global_indices()).all()
    assert (visited == np.arange(k * c) % c).all()
    assert LABELS[idx, np.arange(k * c) % c].all()  # draw i holds an image positive for class i mod C
    assert (np.bincount(visited, minlength=c) == k).all()


def test_cycle_skips_an_empty_class_in_its_turns():
    labels = LABELS.copy()
    labels[:, 1] = 0
    with pytest.warns(UserWarning, match="skipped"):
        s = CycleClassSampler(labels, num_samples=12, seed=0)
    assert s.draw_with_classes(s.epoch_rng())[1].tolist() == [0, 2, 3, 4] * 3


def test_class_aware_visits_each_class_once_per_round_in_fresh_orders():
    c, k = LABELS.shape[1], 20
    s = ClassAwareSampler(LABELS, num_samples=k * c, seed=1)
    idx, visited = s.draw_with_classes(s.epoch_rng())
    rounds = visited.reshape(k, c)
    assert (np.sort(rounds, axis=1) == np.arange(c)).all()
    assert len({tuple(r) for r in rounds}) > 1
    assert LABELS[idx, visited].all()


def test_least_sampled_visits_a_least_tallied_class():
    labels = long_tail_labels(400)
    s = LeastSampledClassSampler(labels, num_samples=300, seed=0)
    idx, visited = s.draw_with_classes(s.epoch_rng())
    assert labels[idx, visited].all()
    tally = np.zeros(labels.shape[1])
    for i, c in zip(idx, visited, strict=True):
        assert tally[c] == tally.min()
        tally += labels[i]


def test_least_sampled_is_flatter_than_cycle_on_co_occurring_long_tails():
    labels = long_tail_labels()
    ratio = {}
    for name in ("random", "cycle", "least_sampled"):
        avg = sampler_label_distribution(labels, name, draws=256, repeats=8, seed=0)
        ratio[name] = avg.max() / avg.min()
    assert ratio["least_sampled"] < ratio["cycle"] < ratio["random"]
    assert ratio["least_sampled"] < 0.7 * ratio["cycle"]


def test_cycle_label_counts_are_exact_for_single_label_data():
    labels = np.eye(4, dtype=np.float32)[np.arange(40) % 4]
    assert (sampler_label_distribution(labels, "cycle", draws=64, repeats=3) == 16).all()


def test_least_sampled_draws_260k_fast():
    import time

    labels = long_tail_labels(20000, 26, decay=0.8)
    assert (labels.sum(0) > 0).all()
    s = LeastSampledClassSampler(labels, num_samples=260_000, seed=0)
    t = time.perf_counter()
    assert len(s.global_indices()) == 260_000
    assert time.perf_counter() - t < 10.0


def test_repeat_factors_follow_lvis():
    labels = np.zeros((200, 3), dtype=np.float32)
    labels[:, 0] = 1  # f = 1
    labels[:4, 1] = 1  # f = 0.02
    labels[100:150, 2] = 1  # f = 0.25
    labels[150:160, 2] = np.nan
    s = RepeatFactorSampler(labels, threshold=0.5)
    assert np.allclose(s.class_factors, [1.0, 5.0, np.sqrt(2.0)])
    assert np.allclose(s.repeat_factors[[0, 3, 4, 100, 155]], [5.0, 5.0, 1.0, np.sqrt(2.0), 1.0])
    with pytest.raises(ValueError, match="threshold"):
        RepeatFactorSampler(labels, threshold=0)


def test_repeat_factor_counts_are_proportional_to_r():
    labels = np.zeros((200, 3), dtype=np.float32)
    labels[:, 0] = 1
    labels[:4, 1] = 1  # r = 5
    labels[100:150, 2] = 1  # r = sqrt(2): exercises the stochastic rounding
    s = RepeatFactorSampler(labels, num_samples=1000, threshold=0.5)
    epochs = 60
    counts = np.zeros(200)
    for epoch in range(epochs):
        s.set_epoch(epoch)
        counts += np.bincount(list(s), minlength=200)
    expected = s.repeat_factors * 1000 / s.repeat_factors.sum()
    for group in (slice(0, 4), slice(4, 100), slice(100, 150)):
        assert counts[group].mean() / epochs == pytest.approx(expected[group].mean(), rel=0.08)
    assert counts[:4].min() > counts[4:100].max()  # rare-class images come up more often than head-only ones


# --------------------------------------------------------------------------- configs and the Table 5 report


@pytest.mark.parametrize("name", NAMES)
def test_sampler_configs_compose_and_build(name, tmp_path, hydra_cleanup):
    cfg = compose_config([f"data/sampler={name}"], tmp_path)
    sampler = instantiate(cfg.data.sampler)(labels=LABELS, seed=3)  # as CXRDataModule.build_sampler calls it
    assert isinstance(sampler, option_target("data/sampler", name)) and len(list(sampler)) == len(LABELS)


def _table(out: str) -> tuple[list[str], np.ndarray, np.ndarray, float]:
    rows = [line.split() for line in out.splitlines() if line[:4].strip().isdigit()]
    names = [" ".join(r[1:-3]) for r in rows]
    counts, avg = np.array([int(r[-3]) for r in rows]), np.array([float(r[-2]) for r in rows])
    ratio = float(next(line for line in out.splitlines() if line.startswith("ratio")).split()[-1])
    return names, counts, avg, ratio


def test_report_cli_on_a_cxr_lt_csv(tmp_path):
    from mlgcn_lt.data.classes import CXR_LT_2023_CLASSES

    df = cxr_lt_frame(80, seed=3)
    csv = tmp_path / "train.csv"
    df.to_csv(csv, index=False)
    args = ["report", "--csv", str(csv), "--sampler", "cycle", "--draws", "52", "--repeats", "4", "--seed", "1"]
    run = subprocess.run([sys.executable, "-m", "mlgcn_lt.data.samplers", *args], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    names, counts, avg, ratio = _table(run.stdout)
    assert sorted(names) == sorted(CXR_LT_2023_CLASSES) and (np.diff(counts) <= 0).all()
    truth = df[list(CXR_LT_2023_CLASSES)].to_numpy(dtype=np.float32)
    assert dict(zip(names, counts, strict=True)) == dict(
        zip(CXR_LT_2023_CLASSES, truth.sum(0).astype(int), strict=True)
    )
    expected = sampler_label_distribution(truth, "cycle", draws=52, repeats=4, seed=1)
    order = [CXR_LT_2023_CLASSES.index(n) for n in names]
    assert np.allclose(avg, expected[order], atol=0.051)
    assert (avg >= 2).all()  # cycle: 52 draws over 26 classes, each visited twice
    assert ratio == pytest.approx(expected.max() / expected.min(), abs=0.006)
    assert "paper (Table 5" in run.stdout


def test_report_on_synthetic_and_npy_labels(tmp_path, capsys):
    pytest.importorskip("mlgcn_lt.data.synthetic.labels")
    assert report_main(["report", "--synthetic", "3000", "--sampler", "least_sampled", "--repeats", "3"]) == 0
    names, counts, _, least = _table(capsys.readouterr().out)
    assert len(names) == 26 and counts.sum() > 3000
    assert report_main(["report", "--synthetic", "3000", "--sampler", "cycle", "--repeats", "3"]) == 0
    assert _table(capsys.readouterr().out)[3] > least
    npy = tmp_path / "labels.npy"
    np.save(npy, long_tail_labels(500))
    assert report_main(["report", "--labels-npy", str(npy), "--sampler", "repeat_factor", "--draws", "64"]) == 0
    names, _, avg, _ = _table(capsys.readouterr().out)
    assert names[0] == "class_0" and len(names) == 8 and avg.sum() > 64


def test_least_sampled_epoch_too_long_without_replacement():
    labels = np.eye(5, dtype=np.float32)[[0, 1, 2, 3, 4, 0]]
    labels[5] = 0  # one image without any positive label
    assert LeastSampledClassSampler(labels, replacement=False).num_samples == 5
    assert sorted(LeastSampledClassSampler(labels, replacement=False)) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="num_samples=6 is longer than the 5 images.*replacement=true"):
        LeastSampledClassSampler(labels, num_samples=6, replacement=False)
