"""The report over run dirs (table, Markdown, CSV, CLI) and the figures, on fake run dirs written here."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from helpers import write_run as _write_run
from mlgcn_lt.config import PROJECT_ROOT
from mlgcn_lt.data.stats import LabelStats
from mlgcn_lt.reporting import plots
from mlgcn_lt.reporting.table import collect_runs, main, summarize, to_markdown

CLASSES = ["Support Devices", "Lung Opacity", "Edema", "Nodule", "Hernia", "Pneumoperitoneum"]
LABELS = (np.random.default_rng(0).random((200, 6)) < [0.5, 0.4, 0.2, 0.1, 0.05, 0.02]).astype(np.float32)
STATS = LabelStats.from_labels(LABELS, CLASSES)

#: experiment -> per-seed test/mAP; every other metric is derived from it.
MAP = {"sampler_cycle": [0.30, 0.32, 0.37], "sampler_random": [0.20, 0.26]}


def fake_metrics(m: float) -> dict:
    """A metrics.json like pipeline.train's, driven by one number."""
    out = {f"{s}/{k}": m + d for s in ("val", "test") for k, d in (("mAP", 0), ("mAUC", 0.3), ("mF1", -0.1))}
    out |= {f"test/mAP_{g}": m + d for g, d in (("head", 0.2), ("middle", 0.0), ("tail", -0.1))}
    out |= {f"test/AP/{c}": max(0.0, m + 0.2 - 0.06 * j) for j, c in enumerate(CLASSES)}
    out |= {"best_epoch": 3, "best_checkpoint": None, "wall_time_s": 600 * m}
    return out


def write_run(path: Path, experiment: str, seed: int, metrics: dict | None, log: str = "") -> Path:
    return _write_run(path, experiment, seed, metrics, STATS, log)


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """A multirun dir (jobs 0..4, cycle first on disk), with one null metric, plus a crashed job 10."""
    root = tmp_path / "multirun"
    job = 0
    for experiment in ("sampler_cycle", "sampler_random"):
        for seed, m in enumerate(MAP[experiment]):
            metrics = fake_metrics(m)
            if experiment == "sampler_random" and seed == 1:
                metrics["test/mAP_tail"] = None
            write_run(root / str(job), experiment, seed, metrics)
            job += 1
    write_run(root / "10", "sampler_cycle", 3, None, log="epoch 0 ok\nRuntimeError: CUDA out of memory\n")
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


def test_collect_runs_recurses_into_sweeps_in_job_order(sweep: Path):
    runs = collect_runs([sweep])
    assert [r.path.name for r in runs] == ["0", "1", "2", "3", "4", "10"]
    assert [r.ok for r in runs] == [True] * 5 + [False]
    assert runs[-1].experiment == "sampler_cycle" and "no metrics.json" in runs[-1].error
    assert collect_runs([sweep, sweep / "0"]) == runs  # each run once
    assert collect_runs([str(sweep / "**" / "metrics.json")]) == runs[:5]  # files name their run
    with pytest.raises(FileNotFoundError, match="multirun.yaml is a file outside any run"):
        collect_runs([sweep / "multirun.yaml"])


def test_summarize_means_stds_and_paper_row_order(sweep: Path):
    df = summarize(collect_runs([sweep]))
    assert list(df.experiment) == ["sampler_random", "sampler_cycle"]  # paper order, not discovery order
    cycle, rand = df.iloc[1], df.iloc[0]
    assert (cycle.runs, cycle.failed, cycle.seeds) == (3, 1, "0 1 2")
    assert cycle["mAP_mean"] == pytest.approx(np.mean(MAP["sampler_cycle"]))
    assert cycle["mAP_std"] == pytest.approx(np.std(MAP["sampler_cycle"], ddof=1))
    assert cycle["mAUC_mean"] == pytest.approx(np.mean(MAP["sampler_cycle"]) + 0.3)
    assert cycle["wall_time_min"] == pytest.approx(np.mean(MAP["sampler_cycle"]) * 10)
    assert rand["mAP_head_std"] == pytest.approx(np.std(MAP["sampler_random"], ddof=1))
    assert (rand["mAP_tail_n"], rand["mAP_tail_mean"]) == (1, pytest.approx(0.1))
    assert math.isnan(rand["mAP_tail_std"])
    val = summarize(collect_runs([sweep]), split="val", metrics=["mAP"])
    columns = ["experiment", "runs", "failed", "seeds", "mAP_mean", "mAP_std", "mAP_n", "wall_time_min"]
    assert list(val.columns) == columns


def test_markdown_cells(sweep: Path):
    md = to_markdown(summarize(collect_runs([sweep]), metrics=["mAP", "mAP_tail"]))
    lines = md.splitlines()
    assert lines[0] == "| experiment | runs | mAP | mAP_tail | wall time (min) |" and len(lines) == 4
    assert lines[2] == "| sampler_random | 2 | 0.230 ± 0.042 | 0.100 (1/2) | 2.3 |"
    assert lines[3].startswith("| sampler_cycle | 3 (+1 failed) | 0.330 ± 0.036 |")


def test_main_writes_markdown_and_csv_that_parse_back(sweep: Path, capsys):
    assert main([str(sweep)]) == 0  # --out defaults to the single directory argument
    text = (sweep / "report.md").read_text()
    assert capsys.readouterr().out == text
    table = [line for line in text.splitlines() if line.startswith("| sampler")]
    assert [row.split("|")[1].strip() for row in table] == ["sampler_random", "sampler_cycle"]
    assert "## Runs without metrics (1)" in text and str(sweep / "10") in text
    assert "RuntimeError: CUDA out of memory" in text and "+experiment=sampler_cycle seed=3" in text
    csv = pd.read_csv(sweep / "report.csv")
    assert list(csv.experiment) == ["sampler_random", "sampler_cycle"]
    assert csv["mAP_mean"].iloc[1] == pytest.approx(np.mean(MAP["sampler_cycle"]))
    assert np.isnan(csv["mAP_tail_std"].iloc[0])


def test_null_metric_is_na_one_run_has_no_std_and_failed_experiments_keep_a_row(tmp_path: Path):
    metrics = fake_metrics(0.25) | {"test/mAP_tail": None}
    write_run(tmp_path / "r", "ablation_lse", 0, metrics)
    write_run(tmp_path / "crashed", "zz_new_idea", 0, None)
    md = to_markdown(summarize(collect_runs([tmp_path]), metrics=["mAP", "mAP_tail"]))
    assert md.splitlines()[2:] == [
        "| ablation_lse | 1 | 0.250 | n/a | 2.5 |",
        "| zz_new_idea | 0 (+1 failed) | n/a | n/a | n/a |",
    ]


def test_config_differences_are_noted(tmp_path: Path):
    for seed, root in enumerate(("/data/a", "/data/b")):
        run = write_run(tmp_path / str(seed), "ablation_lse", seed, fake_metrics(0.2))
        cfg = yaml.safe_load((run / "config.yaml").read_text()) | {"data": {"root": root, "seed": seed}}
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert main([str(tmp_path), "--metrics", "mAP"]) == 0
    assert "ablation_lse: runs differ in `data.root`" in (tmp_path / "report.md").read_text()


def test_cli_expands_globs_and_rejects_bad_input(sweep: Path, tmp_path: Path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "mlgcn_lt.report", str(sweep / "[0-2]"), str(sweep / "1*"), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "| sampler_cycle | 3 (+1 failed) |" in proc.stdout  # jobs 0, 1, 2 and the crashed 10
    assert "sampler_random" not in proc.stdout.split("## Runs")[0]
    assert (out / "report.md").read_text() == proc.stdout and (out / "report.csv").is_file()
    assert main([str(tmp_path / "nothing*")]) == 2
    with pytest.raises(SystemExit, match="'mAPP'.*known: .*'mAP'"):
        main([str(sweep), "--metrics", "mAP,mAPP"])


# ---------------------------------------------------------------------------------------------------- figures
def read_png(path: Path) -> tuple[tuple[int, int], str]:
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as img:
        return img.size, img.info.get("Title", "")


def test_per_class_ap_one_run_and_two_series_of_seeds(sweep: Path, tmp_path: Path):
    runs = collect_runs([sweep])
    size, title = read_png(plots.plot_per_class_ap(runs[0], STATS, path=tmp_path / "one.png"))
    assert size[0] > 100 and title.startswith("Per-class test AP: run 1")
    series = [[r for r in runs if r.experiment == e and r.ok] for e in ("sampler_random", "sampler_cycle")]
    path = plots.plot_per_class_ap(series, STATS.to_dict(), ["random", "cycle"], path=tmp_path / "two.png")
    assert read_png(path)[1].startswith("Per-class test AP: random vs cycle\nrandom, 2 runs: mAP head")
    mean, std = plots.per_class_values([r.metrics for r in series[1]], CLASSES)
    assert mean[0] == pytest.approx(np.mean(MAP["sampler_cycle"]) + 0.2)
    assert std[0] == pytest.approx(np.std(MAP["sampler_cycle"], ddof=1))


def test_label_distribution_and_cooccurrence(tmp_path: Path):
    _, title = read_png(plots.plot_label_distribution(STATS, path=tmp_path / "dist.png"))
    assert title.startswith("Training label distribution\n200 images, 6 classes")
    _, title = read_png(plots.plot_cooccurrence(STATS, path=tmp_path / "co.png"))
    assert title.startswith("Label co-occurrence, column-normalised: co(i, j) / count(j)")
    m, names, groups = plots.conditional_cooccurrence(STATS)
    order = plots.class_order(STATS)
    assert names[0] == "Support Devices" and groups[0] == "head" and groups[-1] == "tail"
    i, j = order[1], order[0]
    assert m[1, 0] == pytest.approx(STATS.cooccurrence_counts[i, j] / STATS.counts[j])
    assert np.isnan(np.diag(m)).all()


class FakeHead(nn.Module):
    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w)

    def classifiers(self) -> torch.Tensor:
        return self.w * 1.0


def test_classifier_norms_and_expert_norm_figure(tmp_path: Path):
    weights = [torch.randn(6, 4) for _ in range(3)]
    net = nn.Module()
    net.experts = nn.ModuleList([nn.Module() for _ in weights])
    for expert, w in zip(net.experts, weights, strict=True):
        expert.head = FakeHead(w)
    module = nn.Module()
    module.net = net
    norms = plots.classifier_norms(module)
    np.testing.assert_allclose(norms, torch.stack([w.norm(dim=1) for w in weights]).numpy(), rtol=1e-6)
    _, title = read_png(plots.plot_expert_norms(norms, STATS, path=tmp_path / "norms.png"))
    assert title.startswith("Per-expert classifier norms per class\n3 experts")
    net.experts[1].head = nn.Linear(4, 6)
    with pytest.raises(ValueError, match="Linear"):
        plots.classifier_norms(net)


@pytest.mark.filterwarnings("ignore:.*have no positive image:UserWarning")
def test_sampler_figure_from_synthetic_labels(tmp_path: Path):
    assert main(["--sampler-figure", "synthetic:300", "--draws", "64", "--repeats", "2", "--out", str(tmp_path)]) == 0
    _, title = read_png(tmp_path / "figures" / "sampler_distribution.png")
    assert title.startswith("Labels per class among 64 sampled images") and "300 synthetic" in title
    assert main(["--sampler-figure", "synthetic:50", "--samplers", "nope", "--out", str(tmp_path)]) == 2


@pytest.mark.slow  # trains through train() / fit
def test_report_figures_from_a_real_checkpoint(tiny_cfg, sweep: Path, tmp_path: Path):
    """A real 1-step training with 2 experts: norms from its checkpoint, stats from its hyper-parameters."""
    from mlgcn_lt.training.train import train

    cfg = tiny_cfg(
        "debug=limit",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1",
        "callbacks.early_stopping=null",
        "test=false",
        "model.num_experts=2",
        "model/label_embedding=random",  # no GloVe fit: faster
        "trainer.num_sanity_val_steps=0",
        "callbacks.progress_bar=null",
        "experiment_name=ablation_2experts",
    )
    metrics = train(cfg)
    assert metrics["best_checkpoint"]
    run_dir = Path(cfg.hydra.runtime.output_dir)
    norms, stats = plots.checkpoint_norms(metrics["best_checkpoint"])
    assert norms.shape == (2, stats.num_classes) and (norms > 0).all()
    out = tmp_path / "report"
    assert main([str(run_dir), str(sweep), "--split", "val", "--metrics", "mAP", "--figures", "--out", str(out)]) == 0
    figures = {p.name for p in (out / "figures").iterdir()}
    assert {"expert_norms_ablation_2experts.png", "per_class_ap_sampler_random_vs_sampler_cycle.png"} <= figures
    assert {"label_distribution_ablation_2experts.png", "cooccurrence_sampler_cycle.png"} <= figures
    text = (out / "report.md").read_text()
    assert "![expert norms: ablation_2experts](figures/expert_norms_ablation_2experts.png)" in text
    assert "- sampler_cycle: no checkpoint, no expert-norm figure" in text


def test_report_marks_a_run_that_trained_zero_steps(tmp_path, capsys):
    from mlgcn_lt.reporting.table import main

    for name, steps in (("trained", 40), ("untrained", 0)):
        run = tmp_path / "sweep" / name
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(yaml.safe_dump({"experiment_name": "x", "seed": 0}))
        (run / "metrics.json").write_text(json.dumps({"test/mAP": 0.5, "trained_steps": steps, "wall_time_s": 1}))
    assert main([str(tmp_path / "sweep"), "--metrics", "mAP"]) == 0
    text = capsys.readouterr().out
    assert "| x | 1 (+1 failed) | 0.500 |" in text
    assert "untrained` (x, seed 0): metrics.json says it trained 0 optimizer steps" in text


def test_report_out_must_be_a_directory(tmp_path, capsys):
    from mlgcn_lt.reporting.table import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 0\n")
    target = tmp_path / "report.md"
    target.write_text("keep")
    assert main([str(run), "--out", str(target)]) == 2
    assert f"--out {target} must be a directory" in capsys.readouterr().err and target.read_text() == "keep"
