"""Score a checkpoint on a split with the same Hydra configs as training.

python eval.py ckpt_path=outputs/train/runs/<run>/checkpoints/last.ckpt            # test split
python eval.py ckpt_path=... data=nih_cxr14_sample split=val 'tta=[hflip]' fusion=mean
"""

from __future__ import annotations

from pathlib import Path

import hydra
from dotenv import load_dotenv
from omegaconf import DictConfig

from mlgcn_lt.config import CONF_DIR, setup_config_system
from mlgcn_lt.evaluation.evaluate import evaluate

load_dotenv(Path(__file__).resolve().parent / ".env", override=False)
setup_config_system(CONF_DIR)


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> float | None:
    metrics = evaluate(cfg)
    value = metrics.get(f"{cfg.split}/mAP")
    return None if value is None else float(value)


if __name__ == "__main__":
    main()
