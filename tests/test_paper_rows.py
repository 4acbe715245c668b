"""The paper's rows change what the paper says they change: Table 1 is the 2-expert model; the RIDE rows."""

from __future__ import annotations

from typing import Any

import pytest
from omegaconf import OmegaConf

from conftest import compose_config

#: Table 1 of the paper (mAP per class group; head = top 9, middle = 8, tail = bottom 9 of the 26 CXR-LT classes).
TABLE1 = {"random": (0.4640537777, 0.114901875, 0.0939671), "cycle": (0.506851888, 0.170249875, 0.1075862)}
GROUP_SIZES = (9, 8, 9)
#: Table 2 of the paper (development mAP).
TABLE2 = {"ablation_2experts": 0.229, "ablation_4experts_cycle": 0.271}


def flat(node: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key → leaf value."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): node}


def resolved(experiment: str, tmp_path) -> dict[str, Any]:
    """The row's composed config (hydra's own node left out), resolved, as dotted keys."""
    cfg = compose_config([f"+experiment={experiment}"], tmp_path / "run")  # one run dir: paths equal
    cfg = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    cfg.pop("hydra")
    return flat(cfg)


def differing(a: dict[str, Any], b: dict[str, Any]) -> set[str]:
    return {k for k in a.keys() | b.keys() if a.get(k, "<absent>") != b.get(k, "<absent>")}


def test_table1_averages_to_the_2_expert_row_not_a_4_expert_row():
    def mean(groups):
        return sum(n * m for n, m in zip(GROUP_SIZES, groups, strict=True)) / sum(GROUP_SIZES)

    assert sum(GROUP_SIZES) == 26
    assert mean(TABLE1["random"]) == pytest.approx(0.2285, abs=5e-5)
    assert round(mean(TABLE1["random"]), 3) == TABLE2["ablation_2experts"]
    assert mean(TABLE1["cycle"]) == pytest.approx(0.2651, abs=5e-5)
    assert abs(mean(TABLE1["cycle"]) - TABLE2["ablation_4experts_cycle"]) > 0.005  # no 4-expert row


def test_table1_rows_are_the_2_expert_model_differing_only_in_the_sampler(tmp_path, hydra_cleanup):
    rows = {name: resolved(name, tmp_path) for name in ("sampler_random", "sampler_cycle", "ablation_2experts")}
    assert rows["sampler_random"]["model.num_experts"] == rows["sampler_cycle"]["model.num_experts"] == 2
    assert rows["sampler_random"]["data.sampler._target_"].endswith(".RandomSampler")
    assert rows["sampler_cycle"]["data.sampler._target_"].endswith(".CycleClassSampler")
    sampler_keys = {
        k for k in rows["sampler_cycle"].keys() | rows["sampler_random"].keys() if k.startswith("data.sampler")
    }
    diff = differing(rows["sampler_random"], rows["sampler_cycle"])
    assert diff == {"experiment_name"} | (diff & sampler_keys) and diff & sampler_keys
    # random sampling: exactly Table 2's 2-expert row
    assert differing(rows["sampler_random"], rows["ablation_2experts"]) == {"experiment_name"}


def test_table4_row_stays_the_4_expert_model(tmp_path, hydra_cleanup):
    least, cycle = resolved("sampler_least_sampled", tmp_path), resolved("ablation_4experts_cycle", tmp_path)
    assert least["model.num_experts"] == 4 and least["data.sampler._target_"].endswith(".LeastSampledClassSampler")
    assert all(k == "experiment_name" or k.startswith("data.sampler") for k in differing(least, cycle))
