"""The paper's rows change what the paper says they change: Table 1 is the 2-expert model; the RIDE rows."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from helpers import compose_config

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


# ------------------------------------------------------------------ the RIDE rows (Table 2 row 4, and RIDE's recipe)
RIDE_KEYS = {"_target_", "_recursive_", "weight", "distribution", "temperature", "detach_mean", "max_logit"}


def test_ablation_ride_adds_only_the_diversity_term(tmp_path, hydra_cleanup):
    cycle, ride = resolved("ablation_4experts_cycle", tmp_path), resolved("ablation_ride", tmp_path)
    # the classification loss is exactly the previous row's (BCE on the averaged logits), moved under the RIDE loss
    before = {k.removeprefix("model.loss."): v for k, v in cycle.items() if k.startswith("model.loss.")}
    after = {k.removeprefix("model.loss.classification."): v for k, v in ride.items() if ".classification." in k}
    assert after == before and before["apply_to"] == "ensemble" and before["_target_"].endswith(".BCELoss")
    assert ride["model.loss.weight"] == 0.2 and ride["model.loss.detach_mean"] is False
    moved = {f"model.loss.{k}" for k in before} | {f"model.loss.classification.{k}" for k in before}
    assert differing(cycle, ride) == {"experiment_name"} | moved | {f"model.loss.{k}" for k in RIDE_KEYS}


def test_ablation_ride_individual_differs_from_ablation_ride_in_the_stated_keys(tmp_path, hydra_cleanup):
    ride, individual = resolved("ablation_ride", tmp_path), resolved("ablation_ride_individual", tmp_path)
    assert differing(ride, individual) == {
        "experiment_name",
        "model.loss.classification.apply_to",
        "model.loss.classification.experts_reduction",
        "model.loss.detach_mean",
    }
    assert individual["model.loss.classification.apply_to"] == "experts"
    assert individual["model.loss.classification.experts_reduction"] == "mean"
    assert individual["model.loss.detach_mean"] is True


@pytest.mark.parametrize("row", ["ablation_lse", "ablation_mha", "ablation_lse_mha"])
def test_rows_on_top_of_ablation_ride_add_only_their_part(row, tmp_path, hydra_cleanup):
    ride, other = resolved("ablation_ride", tmp_path), resolved(row, tmp_path)
    parts = {"ablation_lse": ("model.pooling",), "ablation_mha": ("model.attention",)}
    parts["ablation_lse_mha"] = parts["ablation_lse"] + parts["ablation_mha"]
    assert {k for k in differing(ride, other) if k != "experiment_name" and not k.startswith(parts[row])} == set()
    assert other["model.loss.classification.apply_to"] == "ensemble"
    if "mha" in row:
        assert other["model.attention._target_"].endswith(".LabelSequenceAttention")


def reference_div(z: torch.Tensor, mean_from: torch.Tensor, t: float = 1.0, clip: float = 10.0) -> torch.Tensor:
    """Eq. 3 by hand, per-label Bernoulli form: −1/(n−1) Σ_i KL(p̄ ‖ p⁽ⁱ⁾), p̄ from ``mean_from``, times T²."""
    p = torch.sigmoid(z.clamp(-clip, clip) / t)
    pbar = torch.sigmoid(mean_from.clamp(-clip, clip) / t).mean(0)
    kl = pbar * (pbar.log() - p.log()) + (1 - pbar) * ((1 - pbar).log() - (1 - p).log())
    return -(t**2) * kl.mean(-1).sum(0).mean() / (z.shape[0] - 1)


def row_loss(row: str, tmp_path, *overrides: str) -> torch.nn.Module:
    from mlgcn_lt.losses.base import build_loss

    cfg = compose_config([f"+experiment={row}", *overrides], tmp_path / "run")
    return build_loss(cfg.model.loss, None)


def expert_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = (3 * torch.randn(4, 6, 5, generator=g)).requires_grad_(True)  # (E, B, C)
    y = (torch.rand(6, 5, generator=g) < 0.3).float()
    return z, y


def test_ablation_ride_loss_is_bce_of_the_mean_logits_plus_lambda_div(tmp_path, hydra_cleanup):
    from mlgcn_lt.models.experts import ModelOutput

    z, y = expert_batch()
    loss = row_loss("ablation_ride", tmp_path)(ModelOutput(z.mean(0), z), y)
    expected = F.binary_cross_entropy_with_logits(z.mean(0), y) + 0.2 * reference_div(z, z)
    torch.testing.assert_close(loss.total, expected)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_ablation_ride_individual_loss_is_mean_expert_bce_plus_lambda_t2_div_with_pbar_detached(
    temperature, tmp_path, hydra_cleanup
):
    from mlgcn_lt.models.experts import ModelOutput

    z, y = expert_batch()
    fn = row_loss("ablation_ride_individual", tmp_path, f"model.loss.temperature={temperature}")
    loss = fn(ModelOutput(z.mean(0), z), y).total
    (grad,) = torch.autograd.grad(loss, z)

    def clf() -> torch.Tensor:
        return torch.stack([F.binary_cross_entropy_with_logits(e, y) for e in z]).mean()

    expected = clf() + 0.2 * reference_div(z, z.detach(), temperature)  # p̄ a constant: no gradient through it
    (expected_grad,) = torch.autograd.grad(expected, z)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(grad, expected_grad)
    # with p̄ not detached the gradient differs: the check above sees the stop-gradient
    (attached_grad,) = torch.autograd.grad(clf() + 0.2 * reference_div(z, z, temperature), z)
    assert not torch.allclose(grad, attached_grad, atol=1e-6)
