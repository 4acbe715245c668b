"""Every experiment row composes with any data / trainer choice, instantiates and runs one fast_dev_run step."""

from __future__ import annotations

import pytest

from helpers import CONF_DIR
from mlgcn_lt.reporting.table import PAPER_ORDER
from mlgcn_lt.training.train import train

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
PAPER_ROWS = list(PAPER_ORDER)


#: Rows whose recipe IS the backbone (the CXR-LT 2023 winner is ConvNeXt-S): the only rows that set one. They run
#: here with that backbone, randomly initialised, at 32 px.
BACKBONE_ROWS = {
    "winner_recipe": "convnext_small",
    "winner_recipe_plus": "convnext_small",
    "release_faithful": "resnet101",  # the authors' release: ResNet-101
}
#: Rows that need a stage-1 checkpoint (decoupled training); its model has 2 experts.
STAGE2_ROWS = {"crt"}


def test_all_paper_rows_exist():
    assert set(PAPER_ROWS) <= set(EXPERIMENTS)
    assert set(BACKBONE_ROWS) | STAGE2_ROWS <= set(EXPERIMENTS)


@pytest.mark.slow  # trains through train() / fit
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_runs_one_fast_dev_run_step(experiment, tiny_cfg, request):
    size = 32 if experiment in BACKBONE_ROWS else 64
    extra = ["model.backbone.pretrained=none"] if experiment in BACKBONE_ROWS else []
    if experiment in STAGE2_ROWS:
        extra += [f"stage1_ckpt={request.getfixturevalue('stage1_checkpoint')}", "model.num_experts=2"]
    cfg = tiny_cfg(f"+experiment={experiment}", "debug=fdr", f"data.image_size={size}", *extra)
    assert cfg.experiment_name == experiment
    # Rows touch only the method: data, backbone, resolution and trainer stay the caller's.
    assert cfg.model.backbone.name == BACKBONE_ROWS.get(experiment, "resnet18") and cfg.data.image_size == size
    assert cfg.trainer.accelerator == "cpu"
    metrics = train(cfg)
    assert 0.0 <= metrics["test/mAP"] <= 1.0


def test_full_model_is_what_the_paper_describes(tiny_cfg):
    m = tiny_cfg("+experiment=ablation_lse_mha").model
    assert m.num_experts == 4 and m.pooling.gamma == 0.5 and m.loss.weight == 0.2
    assert m.attention._target_.endswith("LabelSequenceAttention") and m.loss._target_.endswith("RIDELoss")
    assert m.label_embedding._target_.endswith("GloVeEmbedding")


def test_rows_compose_with_other_data_and_backbones(tmp_path, hydra_cleanup):
    from helpers import compose_config

    cfg = compose_config(["data=cxr_lt", "model/backbone=resnet101", "+experiment=ablation_lse_mha"], tmp_path)
    assert cfg.data.image_size == 1024 and cfg.model.backbone.name == "resnet101"
    assert cfg.model.backbone.pretrained == "imagenet" and cfg.model.num_experts == 4
