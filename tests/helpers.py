"""Helpers the tests import (``from helpers import ...``): tiny real-format datasets and composing the real Hydra
configs. Fixtures live in ``conftest.py``; ``tests/`` is on ``sys.path`` through ``pythonpath`` in pyproject."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from PIL import Image

from mlgcn_lt.config import CONF_DIR, PROJECT_ROOT
from mlgcn_lt.data.classes import CXR_LT_2023_CLASSES, CXR_LT_2023_METADATA
from mlgcn_lt.data.stats import LabelStats

SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


REPO_OUTPUTS = PROJECT_ROOT / "outputs"


NIH_SAMPLE = SHARED_DATA / "nih_cxr14_sample"


def toy_stats(num_classes: int, n: int = 120, seed: int = 0) -> LabelStats:
    """Training-label statistics of ``n`` random rows over classes ``c0..c{C-1}``: positive rates falling from 0.5
    (head) to 0.05 (tail), and every class positive at least once."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, num_classes)) < np.linspace(0.5, 0.05, num_classes)).astype(np.float32)
    labels[:num_classes] = np.maximum(labels[:num_classes], np.eye(num_classes, dtype=np.float32))
    return LabelStats.from_labels(labels, [f"c{i}" for i in range(num_classes)])


def write_image(path: Path, size: tuple[int, int] = (40, 48), mode: str = "L", seed: int = 0, fmt: str | None = None):
    """A small random image in ``mode`` (L, RGB, RGBA, I;16, CMYK...)."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, (h, w), dtype=np.uint16))
    elif mode in ("RGB", "RGBA", "CMYK"):
        img = Image.fromarray(rng.integers(0, 255, (h, w, len(mode)), dtype=np.uint8), mode=mode)
    else:
        img = Image.fromarray(rng.integers(0, 255, (h, w), dtype=np.uint8)).convert(mode)
    img.save(path, format=fmt)
    return path


def cxr_lt_frame(
    n: int,
    seed: int = 0,
    path_column: str = "path",
    subject_offset: int = 0,
    classes: Sequence[str] = CXR_LT_2023_CLASSES,
) -> pd.DataFrame:
    """A CXR-LT-layout table of ``n`` rows with random labels (every class positive at least once if n >= C)."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, len(classes))) < 0.2).astype(int)
    for j in range(min(n, len(classes))):
        labels[(j * 7) % n, j] = 1
    rows = {
        "dicom_id": [f"d{seed}_{i:04d}" for i in range(n)],
        "subject_id": [10000000 + subject_offset + i // 2 for i in range(n)],
        "study_id": [50000000 + subject_offset + i for i in range(n)],
        "ViewPosition": ["PA"] * n,
        "ViewCodeSequence_CodeMeaning": ["postero-anterior"] * n,
        path_column: [f"files/p10/s{seed}_{i:04d}.jpg" for i in range(n)],
    }
    df = pd.DataFrame(rows)
    for j, c in enumerate(classes):
        df[c] = labels[:, j]
    assert list(df.columns[:5]) == list(CXR_LT_2023_METADATA)
    return df


def write_cxr_lt_dir(
    root: Path,
    sizes: dict[str, int] | None = None,
    image_size: tuple[int, int] = (40, 48),
    path_column: str = "path",
) -> Path:
    """train.csv / development.csv / test.csv + JPEG images, in the CXR-LT layout."""
    sizes = sizes or {"train": 40, "development": 16, "test": 16}
    for k, (split, n) in enumerate(sizes.items()):
        df = cxr_lt_frame(n, seed=k, path_column=path_column, subject_offset=1000 * k)
        for i, rel in enumerate(df[path_column]):
            write_image(root / rel, image_size, seed=1000 * k + i)
        df.to_csv(root / f"{split}.csv", index=False)
    return root


def make_datamodule(root: Path, **kw):
    """A CXRDataModule on a CXR-LT-layout folder (32 px, batch 4, no workers), options overridable."""
    from mlgcn_lt.data.datamodule import CXRDataModule

    args = dict(
        format="cxr_lt",
        root=str(root),
        train_csv="train.csv",
        val_csv="development.csv",
        test_csv="test.csv",
        image_size=32,
        batch_size=4,
        num_workers=0,
    )
    return CXRDataModule(**{**args, **kw})


TINY_OVERRIDES = [
    "data.synthetic=null",
    "data.image_size=32",
    "data.batch_size=4",
    "data.loader.eval_batch_size=8",
    "data.num_workers=0",
    "trainer=cpu",
    "logger=csv",
]


def write_run(path: Path, experiment: str, seed: int, metrics: dict | None, stats: LabelStats, log: str = "") -> Path:
    """A run dir as train.py writes it: config.yaml, .hydra/overrides.yaml, label_stats.json, metrics.json."""
    (path / ".hydra").mkdir(parents=True)
    config = {"experiment_name": experiment, "seed": seed, "task_name": "train", "paths": {"output_dir": str(path)}}
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"+experiment={experiment}", f"seed={seed}"]))
    (path / "label_stats.json").write_text(json.dumps(stats.to_dict()))
    if metrics is not None:
        (path / "metrics.json").write_text(json.dumps(metrics))
    if log:
        (path / "train.log").write_text(log)
    return path


def compose_config(overrides: Sequence[str], output_dir: Path, config_name: str = "train") -> DictConfig:
    """Compose the real configs as ``python train.py <overrides>`` would, with the run directory at ``output_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


def train_stage1(data_root: Path, output_dir: Path, *overrides: str) -> Path:
    """A short real training run on the tiny data (one epoch of two batches, no test): its best checkpoint."""
    from mlgcn_lt.training.train import train

    cfg = compose_config(
        [
            f"data.root={data_root}",
            *TINY_OVERRIDES,
            "debug=limit",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=1",
            "trainer.num_sanity_val_steps=0",
            "test=false",
            *overrides,
        ],
        output_dir,
    )
    try:
        return Path(train(cfg)["best_checkpoint"])
    finally:
        GlobalHydra.instance().clear()


__all__ = [
    "CONF_DIR",
    "NIH_SAMPLE",
    "PROJECT_ROOT",
    "REPO_OUTPUTS",
    "SHARED_DATA",
    "TINY_OVERRIDES",
    "compose_config",
    "cxr_lt_frame",
    "make_datamodule",
    "toy_stats",
    "train_stage1",
    "write_cxr_lt_dir",
    "write_image",
    "write_run",
]
