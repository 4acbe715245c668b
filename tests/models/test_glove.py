"""GloVe label vectors (paper Section 3.1; Pennington et al. 2014): fit quality, determinism, cache, config."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate

import mlgcn_lt.models.glove as glove
from helpers import compose_config
from mlgcn_lt.data.stats import LabelStats
from mlgcn_lt.models.glove import GloVeEmbedding, fit_glove, glove_counts

CXR_STATS = Path(__file__).resolve().parents[3] / "shared" / "data" / "cxr_lt_2023_stats"


def synthetic_stats(num_classes: int = 12, n: int = 3000, seed: int = 0) -> LabelStats:
    """Long-tailed labels (prevalence 40 % → 0.5 %) with correlated class pairs, from a latent factor per image."""
    rng = np.random.default_rng(seed)
    prevalence = np.geomspace(0.4, 0.005, num_classes)
    loadings = rng.normal(0.0, 1.0, (num_classes, 3))
    latent = rng.normal(0.0, 1.0, (n, 3))
    scores = latent @ loadings.T + rng.normal(0.0, 1.0, (n, num_classes))
    thresholds = [np.quantile(scores[:, j], 1 - p) for j, p in enumerate(prevalence)]
    labels = (scores > np.asarray(thresholds)).astype(np.float32)
    return LabelStats.from_labels(labels, [f"c{i}" for i in range(num_classes)])


def cxr_lt_stats() -> LabelStats:
    """The real CXR-LT 2023 training statistics shipped in ../shared (skip when absent)."""
    if not (CXR_STATS / "cooccurrence.csv").is_file() or not (CXR_STATS / "class_counts.csv").is_file():
        pytest.skip(f"real CXR-LT statistics not found at {CXR_STATS}")
    pd = pytest.importorskip("pandas")
    co = pd.read_csv(CXR_STATS / "cooccurrence.csv", index_col=0)
    counts = pd.read_csv(CXR_STATS / "class_counts.csv", index_col=0)["train_positives"]
    classes = list(co.columns)
    assert list(co.index) == classes
    return LabelStats(tuple(classes), counts.loc[classes].to_numpy(np.int64), co.to_numpy(np.int64), 0, {})


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def cosine(e: np.ndarray) -> np.ndarray:
    e = e.astype(np.float64) / np.linalg.norm(e, axis=1, keepdims=True)
    return e @ e.T


def fit_quality(stats: LabelStats) -> tuple[float, float, np.ndarray]:
    """Correlations with log X_ij over pairs i≠j with X_ij > 0: of w_i·w̃_j + b_i + b̃_j, and of E·Eᵀ."""
    emb = GloVeEmbedding()
    vectors = emb(stats).astype(np.float64)
    x = glove_counts(stats, "counts")
    pairs = (x > 0) & ~np.eye(stats.num_classes, dtype=bool)
    assert emb.last_fit is not None and pairs.sum() >= 10
    r_model = corr(emb.last_fit.predicted_log_counts()[pairs], np.log(x[pairs]))
    r_vectors = corr((vectors @ vectors.T)[pairs], np.log(x[pairs]))
    return r_model, r_vectors, vectors


def test_shape_dtype_and_determinism():
    stats = synthetic_stats()
    a = GloVeEmbedding(seed=0)(stats)
    assert a.shape == (12, 300) and a.dtype == np.float32 and np.isfinite(a).all()
    assert np.array_equal(a, GloVeEmbedding(seed=0)(stats))  # bitwise
    assert not np.allclose(a, GloVeEmbedding(seed=1)(stats))
    assert GloVeEmbedding(dim=16, optimizer="adagrad", diagonal="zero")(stats).shape == (12, 16)


def test_fit_reproduces_synthetic_cooccurrence():
    stats = synthetic_stats()
    r_model, r_vectors, _ = fit_quality(stats)
    assert r_model > 0.99
    assert r_vectors > 0.9  # seen: 0.994


def test_fit_converges_fast_on_real_cxr_lt_and_matches_released_vectors():
    stats = cxr_lt_stats()
    r_model, r_vectors, vectors = fit_quality(stats)
    # Seen: r_model 1.000, r_vectors 0.995 (seeds 0-2; loss J < 1e-14 after 1000 Adam steps, ~0.2 s).
    assert r_model > 0.99 and r_vectors > 0.9
    released_path = CXR_STATS / "released_glove_label_vectors.npy"
    if not released_path.is_file():
        pytest.skip(f"released GloVe vectors not found at {released_path}")
    released = np.load(released_path)
    assert released.shape == vectors.shape
    upper = np.triu_indices(stats.num_classes, 1)
    # Seen: 0.99 for diagonal=counts (0.87 with diagonal=zero, 0.92 with full-batch AdaGrad).
    assert corr(cosine(vectors)[upper], cosine(released)[upper]) > 0.8


def test_loss_decreases_and_adagrad_also_fits():
    x = glove_counts(synthetic_stats(8), "counts")
    start = fit_glove(x, dim=32, iterations=0).loss
    for optimizer in ("adam", "adagrad"):
        fit = fit_glove(x, dim=32, iterations=500, optimizer=optimizer)
        assert np.isfinite(fit.loss) and fit.loss < 0.05 * start


def test_cache_is_written_atomically_and_reused(tmp_path, monkeypatch):
    stats = synthetic_stats(6, n=500)
    emb = GloVeEmbedding(dim=8, cache_dir=str(tmp_path / "glove"))
    key = emb.cache_key(stats)
    # A stale temp file from a killed writer is never taken for the entry.
    (tmp_path / "glove").mkdir()
    (tmp_path / "glove" / f".glove_{key}.abc.tmp").write_bytes(b"\x93NUMPY partial")
    first = emb(stats)
    path = tmp_path / "glove" / f"glove_{key}.npy"
    assert emb.cache_path(stats) == path and path.is_file()
    assert np.array_equal(np.load(path), first)
    assert sorted(p.name for p in path.parent.iterdir()) == [f".glove_{key}.abc.tmp", path.name]

    def no_fit(*args, **kwargs):
        raise AssertionError("refitted instead of reading the cache")

    monkeypatch.setattr(glove, "fit_glove", no_fit)
    assert np.array_equal(GloVeEmbedding(dim=8, cache_dir=str(tmp_path / "glove"))(stats), first)
    monkeypatch.undo()

    # A corrupt entry is refitted and overwritten.
    path.write_bytes(b"\x93NUMPY truncated")
    assert np.array_equal(emb(stats), first) and np.array_equal(np.load(path), first)


def test_cache_key_depends_on_statistics_and_hyperparameters():
    stats = synthetic_stats(6, n=500)
    key = GloVeEmbedding().cache_key(stats)
    assert key == GloVeEmbedding(cache_dir="/elsewhere").cache_key(stats)
    co = stats.cooccurrence_counts.copy()
    co[0, 1] += 1
    changed = [
        LabelStats(stats.classes, stats.counts + 1, stats.cooccurrence_counts, stats.num_images, stats.groups),
        LabelStats(stats.classes, stats.counts, co, stats.num_images, stats.groups),
        LabelStats(("x", *stats.classes[1:]), stats.counts, stats.cooccurrence_counts, stats.num_images, stats.groups),
    ]
    keys = {GloVeEmbedding().cache_key(s) for s in changed}
    options = [{"dim": 64}, {"x_max": 50.0}, {"alpha": 0.5}, {"iterations": 10}, {"lr": 0.01}, {"seed": 1}]
    options += [{"optimizer": "adagrad"}, {"diagonal": "zero"}]
    keys |= {GloVeEmbedding(**o).cache_key(stats) for o in options}
    assert key not in keys and len(keys) == len(changed) + len(options)


def test_empty_class_warns_once_and_stays_finite(caplog):
    labels = np.zeros((20, 4), dtype=np.float32)
    labels[:12, 0] = labels[5:15, 1] = labels[:3, 3] = 1  # c2: no positive
    stats = LabelStats.from_labels(labels, ["c0", "c1", "c2", "c3"])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=glove.__name__):
        vectors = GloVeEmbedding(dim=16)(stats)
    warnings = [r for r in caplog.records if r.name == glove.__name__ and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "c2" in warnings[0].getMessage() and "c0" not in warnings[0].getMessage()
    assert np.isfinite(vectors).all() and 0 < np.linalg.norm(vectors[2]) < 0.5
    assert np.array_equal(vectors, GloVeEmbedding(dim=16)(stats))
    # diagonal=zero: classes that are never positive together get no signal either.
    alone = np.zeros((6, 2), dtype=np.float32)
    alone[:3, 0], alone[3:, 1] = 1, 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=glove.__name__):
        out = GloVeEmbedding(dim=8, diagonal="zero")(LabelStats.from_labels(alone, ["a", "b"]))
    assert np.isfinite(out).all() and "['a', 'b']" in caplog.text


@pytest.mark.parametrize("num_classes", [1, 2])
def test_one_or_two_classes(num_classes):
    labels = np.ones((5, num_classes), dtype=np.float32)
    out = GloVeEmbedding(dim=8)(LabelStats.from_labels(labels, [f"c{i}" for i in range(num_classes)]))
    assert out.shape == (num_classes, 8) and np.isfinite(out).all()


def test_invalid_options_fail_clearly():
    with pytest.raises(ValueError, match="dim > 0"):
        GloVeEmbedding(dim=0)
    with pytest.raises(ValueError, match="diagonal"):
        GloVeEmbedding(diagonal="ones")  # type: ignore[arg-type]


def test_yaml_composes_and_instantiates(tmp_path, hydra_cleanup):
    cfg = compose_config(["model/label_embedding=glove"], tmp_path)
    node = cfg.model.label_embedding
    assert node.dim == 300 and node.x_max == 100.0 and node.alpha == 0.75 and node.diagonal == "counts"
    assert node.seed == cfg.seed and str(node.cache_dir).endswith("/cache/glove")
    cfg = compose_config(["model/label_embedding=glove", f"model.label_embedding.cache_dir={tmp_path / 'c'}"], tmp_path)
    emb = instantiate(cfg.model.label_embedding)
    assert isinstance(emb, GloVeEmbedding)
    vectors = emb(synthetic_stats(5, n=400))
    assert vectors.shape == (5, 300) and len(list((tmp_path / "c").glob("glove_*.npy"))) == 1
    with pytest.raises(ConfigCompositionException):
        compose_config(["model/label_embedding=glove", "model.label_embedding.diagonal=ones"], tmp_path)
