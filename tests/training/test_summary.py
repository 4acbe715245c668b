"""The end-of-run console summary: one row per split with metrics, the outputs' place."""

from mlgcn_lt.training.summary import summary_table


def test_summary_lists_the_scored_splits_and_where_the_outputs_are():
    metrics = {"val/mAP": 0.3101, "val/mAP_head": 0.6, "val/mAP_tail": 0.1, "test/mAP": 0.2894, "test/mAP_tail": 0.07}
    metrics |= {"dev/n_classes_without_positives": 0, "best_epoch": 4, "wall_time_s": 287.3}
    text = summary_table(metrics, "outputs/train/runs/x")
    lines = text.splitlines()
    assert lines[0].split() == ["split", "mAP", "mAUC", "mF1", "head", "middle", "tail"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:4]}
    assert rows == {"val": ["0.310", "—", "—", "0.600", "—", "0.100"], "test": ["0.289", "—", "—", "—", "—", "0.070"]}
    assert "dev" not in rows  # no dev metrics (an unlabelled report split): no row
    assert "best epoch 4" in text and "4 min 47 s" in text and "outputs/train/runs/x" in text
