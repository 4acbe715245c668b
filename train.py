"""Train and test ML-GCN (with experts) from a Hydra config.

python train.py                                   # the embedded synthetic CXR-LT, on CPU in minutes
python train.py data=nih_cxr14_sample             # real NIH chest X-rays
python train.py +experiment=ablation_lse_mha      # a row of the paper's ablation
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from dotenv import load_dotenv
from omegaconf import DictConfig

from mlgcn_lt.config import CONF_DIR, setup_config_system
from mlgcn_lt.training.train import train

log = logging.getLogger(__name__)

load_dotenv(Path(__file__).resolve().parent / ".env", override=False)
setup_config_system(CONF_DIR)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    value = metrics.get(cfg.get("optimized_metric"))
    return None if value is None else float(value)


if __name__ == "__main__":
    main()
