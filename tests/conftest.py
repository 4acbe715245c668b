"""Shared fixtures: tiny real-format datasets written to tmp dirs, and composition of the real Hydra configs."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from PIL import Image

from mlgcn_lt.config import CONF_DIR, PROJECT_ROOT, setup_config_system
from mlgcn_lt.data.classes import CXR_LT_2023_CLASSES, CXR_LT_2023_METADATA

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# Runs that tests start without an explicit directory (also in subprocesses, which inherit the environment) go to
# a temporary folder, never into the repository's own outputs/ (nor into a user's MLGCN_LOG_DIR).
TEST_LOG_DIR = Path(tempfile.mkdtemp(prefix="mlgcn-test-logs-"))
os.environ["MLGCN_LOG_DIR"] = str(TEST_LOG_DIR)
setup_config_system(CONF_DIR)

SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"
REPO_OUTPUTS = PROJECT_ROOT / "outputs"


def _run_dirs(top: Path) -> set[Path]:
    return (
        {p.parent for p in top.rglob("run_key.txt")} | {p.parent for p in top.rglob(".hydra")}
        if top.is_dir()
        else set()
    )


@pytest.fixture(scope="session", autouse=True)
def no_runs_in_repository_outputs() -> Iterator[None]:
    """Fail the session if any test left a run directory in the repository's own ``outputs/``."""
    before = _run_dirs(REPO_OUTPUTS)
    yield
    stray = sorted(_run_dirs(REPO_OUTPUTS) - before)
    shutil.rmtree(TEST_LOG_DIR, ignore_errors=True)
    assert not stray, f"tests wrote {len(stray)} run directories into {REPO_OUTPUTS}: {[str(p) for p in stray[:5]]}"


NIH_SAMPLE = SHARED_DATA / "nih_cxr14_sample"


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


@pytest.fixture(scope="session")
def tiny_cxr_lt(tmp_path_factory) -> Path:
    """A tiny CXR-LT-format dataset shared by the tests that only read it."""
    return write_cxr_lt_dir(tmp_path_factory.mktemp("tiny_cxr_lt"))


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
    "data.eval_batch_size=8",
    "data.num_workers=0",
    "trainer=cpu",
    "logger=csv",
]


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


@pytest.fixture
def hydra_cleanup() -> Iterator[None]:
    yield
    GlobalHydra.instance().clear()


@pytest.fixture
def tiny_cfg(tiny_cxr_lt: Path, tmp_path: Path, hydra_cleanup):
    """Factory: compose with the tiny dataset plus ``extra`` overrides."""

    def make(*extra: str) -> DictConfig:
        return compose_config([f"data.root={tiny_cxr_lt}", *TINY_OVERRIDES, *extra], tmp_path / "run")

    return make


def train_stage1(data_root: Path, output_dir: Path, *overrides: str) -> Path:
    """A short real training run on the tiny data (one epoch of two batches, no test): its best checkpoint."""
    from mlgcn_lt.pipeline import train

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


@pytest.fixture(scope="session")
def stage1_checkpoint(tiny_cxr_lt: Path, tmp_path_factory) -> Path:
    """A stage-1 checkpoint for decoupled training (cRT): resnet18, 2 experts, one short epoch of SGD."""
    out = tmp_path_factory.mktemp("stage1")
    return train_stage1(tiny_cxr_lt, out, "model.num_experts=2", "model/optimizer=sgd", "model.optimizer.momentum=0")
