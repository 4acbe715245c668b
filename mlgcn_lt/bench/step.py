"""Training-step time: a plain PyTorch loop vs what ``train.py`` runs (MLGCNModule under a Lightning Trainer with the
configured precision, gradient clipping, CSV logger and progress bar), on the same model, loss, optimizer and batches.

Times are wall-clock over ``steps`` steps after ``warmup`` steps, synchronising the device only at both ends, so a
host-device sync inside the step shows up as lost overlap; every logging interval (10 steps) is included.
"""

from __future__ import annotations

import contextlib
import io
import logging
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from mlgcn_lt.data.classes import CXR_LT_2023_CLASSES
from mlgcn_lt.data.stats import LabelStats
from mlgcn_lt.training.callbacks.progress import ProgressBar
from mlgcn_lt.training.module import MLGCNModule

#: The paper's full model (LSE pooling, attention, RIDE loss); label vectors are random (they do not change the cost).
DEFAULT_MODEL = ("model/pooling=lse", "model/attention=mha", "model/loss=ride", "model/label_embedding=random")


def compose(backbone: str, experts: int, device: str, overrides: Sequence[str] = (), **model: Any) -> dict:
    """Resolved ``model`` and ``trainer`` configs as ``train.py`` composes them (``trainer=gpu`` on CUDA)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from mlgcn_lt.config import CONF_DIR, setup_config_system

    setup_config_system(CONF_DIR)
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    base = [o for o in DEFAULT_MODEL if o.split("=", 1)[0] not in given]
    base += [
        f"model/backbone={backbone}",
        "model.backbone.pretrained=none",
        f"model.num_experts={experts}",
        f"trainer={'gpu' if device == 'cuda' else 'cpu'}",
        "trainer.default_root_dir=.",
        *(f"model.{k}={v}" for k, v in model.items()),
    ]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
            cfg = hydra_compose(config_name="train", overrides=[*base, *overrides])
    finally:
        GlobalHydra.instance().clear()
    return {k: OmegaConf.to_container(cfg[k], resolve=True, enum_to_str=True) for k in ("model", "trainer")}


def build_module(model_cfg: dict, num_classes: int = len(CXR_LT_2023_CLASSES)) -> MLGCNModule:
    """The module of ``model_cfg`` with label statistics of a random long-tailed label matrix."""
    rng = np.random.default_rng(0)
    labels = (rng.random((512, num_classes)) < np.geomspace(0.3, 0.01, num_classes)).astype(np.float32)
    stats = LabelStats.from_labels(labels, list(CXR_LT_2023_CLASSES[:num_classes]))
    return instantiate(OmegaConf.create(model_cfg), stats=stats.to_dict())


def make_loader(n: int, batch: int, size: int, num_classes: int, device: str, distinct: int = 2) -> DataLoader:
    """``n`` batches (``distinct`` different ones, repeated) of uint8 images and 0/1 targets, like the datamodule."""
    gen = torch.Generator().manual_seed(0)
    made = [
        {
            "image": torch.randint(0, 256, (batch, 1, size, size), dtype=torch.uint8, generator=gen),
            "target": (torch.rand(batch, num_classes, generator=gen) < 0.2).float(),
            "index": torch.arange(batch),
        }
        for _ in range(distinct)
    ]
    return DataLoader([made[i % distinct] for i in range(n)], batch_size=None, pin_memory=device == "cuda")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _optimizer(module: MLGCNModule) -> torch.optim.Optimizer:
    opt = module.configure_optimizers()
    return opt["optimizer"] if isinstance(opt, dict) else opt


def run_plain(module: MLGCNModule, loader: DataLoader, warmup: int, trainer_cfg: dict, device: str) -> float:
    """ms per step of the bare loop: zero grads, forward (autocast as the trainer's precision), loss, backward, clip,
    step."""
    dev = torch.device(device)
    module.to(dev).train()
    net, loss_fn, opt = module.net, module.loss_fn, _optimizer(module)
    params = [p for p in module.parameters() if p.requires_grad]
    clip = trainer_cfg.get("gradient_clip_val")
    precision = str(trainer_cfg.get("precision", "32-true"))
    amp = (
        (lambda: torch.autocast(dev.type, dtype=torch.bfloat16))
        if precision.startswith("bf16")
        else contextlib.nullcontext
    )
    marks = []
    for i, batch in enumerate(loader):
        images = batch["image"].to(dev, non_blocking=True)
        target = batch["target"].to(dev, non_blocking=True)
        opt.zero_grad(set_to_none=True)  # before the forward pass, as Lightning does: grads freed meanwhile
        with amp():
            loss = loss_fn(net(images), target).total
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        if i + 1 in (warmup, len(loader)):
            _sync(dev)
            marks.append(time.perf_counter())
    return 1000.0 * (marks[1] - marks[0]) / (len(loader) - warmup)


class _Clock(L.Callback):
    def __init__(self, warmup: int, total: int, device: torch.device) -> None:
        self.warmup, self.total, self.device, self.marks = warmup, total, device, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if batch_idx + 1 in (self.warmup, self.total):
            _sync(self.device)
            self.marks.append(time.perf_counter())


def run_framework(
    module: MLGCNModule, loader: DataLoader, warmup: int, trainer_cfg: dict, device: str, workdir: Path
) -> float:
    """ms per step of ``trainer.fit`` with the configured trainer, a CSV logger and the progress bar (refresh 10)."""
    clock = _Clock(warmup, len(loader), torch.device(device))
    trainer = instantiate(
        OmegaConf.create(trainer_cfg),
        default_root_dir=str(workdir),
        max_steps=len(loader),
        max_epochs=1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_model_summary=False,
        logger=CSVLogger(workdir),
        callbacks=[ProgressBar(refresh_rate=10), clock],
    )
    quiet = io.StringIO()  # the bar still renders (its cost is counted), just not on the terminal
    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, train_dataloaders=loader)
    return 1000.0 * (clock.marks[1] - clock.marks[0]) / (len(loader) - warmup)


def expert_flops_ratio(model_cfgs: tuple[dict, dict], size: int) -> float:
    """Training FLOPs (forward + backward) of the second config over the first at ``size`` px, counted on the meta
    device (no compute): the floor any implementation of the experts' own last stages pays."""
    from torch.utils.flop_counter import FlopCounterMode

    flops = []
    for cfg in model_cfgs:
        net = build_module(cfg).net.to("meta").train()
        with FlopCounterMode(display=False) as counter:
            net(torch.zeros(2, 1, size, size, dtype=torch.uint8, device="meta")).logits.sum().backward()
        flops.append(counter.get_total_flops())
    return flops[1] / flops[0]


def measure_step(
    workdir: Path,
    *,
    backbone: str,
    size: int,
    batch: int,
    experts: int,
    warmup: int,
    steps: int,
    repeats: int,
    device: str,
    experts_size: int | None = None,
    experts_steps: int | None = None,
    overrides: Sequence[str] = (),
    log: Callable[[str], None] = lambda s: None,
) -> dict:
    """Medians over ``repeats`` interleaved rounds: plain vs framework with ``experts`` at ``size``, and the plain
    loop with ``experts`` vs one expert at ``experts_size`` (default ``size``; per-parameter costs, the optimizer
    and weight gradients, weigh more at small sizes than at the training size)."""
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    experts_size = experts_size or size
    cfg_n = compose(backbone, experts, device, overrides)
    cfg_1 = compose(backbone, 1, device, overrides)
    modules = {"n": build_module(cfg_n["model"]), "1": build_module(cfg_1["model"])}
    classes = len(CXR_LT_2023_CLASSES)
    loader = make_loader(warmup + steps, batch, size, classes, device)
    e_loader = make_loader(warmup + (experts_steps or steps), batch, experts_size, classes, device)
    times: dict[str, list[float]] = {"plain": [], "framework": [], f"plain_{experts}experts": [], "plain_1expert": []}
    for r in range(repeats):
        times["plain"].append(run_plain(modules["n"], loader, warmup, cfg_n["trainer"], device))
        times["framework"].append(
            run_framework(modules["n"], loader, warmup, cfg_n["trainer"], device, workdir / f"fit{r}")
        )
        if experts_size == size and experts_steps in (None, steps):
            times[f"plain_{experts}experts"].append(times["plain"][-1])
        else:
            times[f"plain_{experts}experts"].append(run_plain(modules["n"], e_loader, warmup, cfg_n["trainer"], device))
        times["plain_1expert"].append(run_plain(modules["1"], e_loader, warmup, cfg_1["trainer"], device))
        log(f"step round {r + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:.0f} ms" for k, v in times.items()))
    ratio = [f / p for f, p in zip(times["framework"], times["plain"], strict=True)]
    experts_ratio = [a / b for a, b in zip(times[f"plain_{experts}experts"], times["plain_1expert"], strict=True)]
    flops = {
        f"{s}px": expert_flops_ratio((cfg_1["model"], cfg_n["model"]), s) for s in sorted({size, experts_size, 1024})
    }
    return {
        "backbone": backbone,
        "image_size": size,
        "experts_image_size": experts_size,
        "batch": batch,
        "experts": experts,
        "device": device,
        "precision": str(cfg_n["trainer"].get("precision")),
        "threads": torch.get_num_threads(),
        "model_overrides": [*DEFAULT_MODEL, *overrides],
        "warmup": warmup,
        "steps": steps,
        "experts_steps": experts_steps or steps,
        "repeats": repeats,
        "ms_per_step": {k: statistics.median(v) for k, v in times.items()},
        "step_overhead_vs_plain": statistics.median(ratio),
        f"experts{experts}_vs_experts1": statistics.median(experts_ratio),
        f"experts{experts}_vs_experts1_flops": flops,
    }
