"""GPU check of the full model at the paper's size (not run in CI): ``python scripts/gpu_check.py [--out FILE]``.

ResNet-101, 4 experts, LSE pooling, attention (``model/attention=mha``), RIDE loss, 1024 px, bf16-mixed,
channels_last, fed by the cached loader. Measures, in one run of ~5-8 minutes on one H200:

1. loader: images/s of the training DataLoader alone (cache + augmentation, ``data.num_workers`` workers);
2. step: images/s of the bare training step on a batch already on the device (no loader), with 4 experts and with
   one (``experts4_vs_experts1``: step time ratio);
3. end to end: images/s of ``Trainer.fit`` (MLGCNModule, the configured trainer, logger, progress bar) fed by the
   cached loader; the GPU starves when this falls short of (2) while (1) is below (2);
4. peak memory of a step at ``--batch`` with and without ``model.activation_checkpointing``;
5. the largest batch that fits (one full step), with and without activation checkpointing.

Writes a JSON object (stdout, and ``--out``); parts left when ``--budget`` seconds run out are skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import io
import json
import os
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlgcn_lt.bench.loader import write_jpegs
from mlgcn_lt.bench.step import _Clock, _optimizer, build_module, compose
from mlgcn_lt.config import default_workers
from mlgcn_lt.data.cache import build_cache
from mlgcn_lt.data.classes import CXR_LT_2023_CLASSES, CXR_LT_2023_METADATA
from mlgcn_lt.data.datamodule import CXRDataModule
from mlgcn_lt.data.samplers import RandomSampler
from mlgcn_lt.training.callbacks.progress import ProgressBar

DEV = torch.device("cuda")


def _jpeg_part(args: tuple[Path, int, int]) -> list[str]:
    root, k, n = args
    names = write_jpegs(root / f"part{k}", n, 2500, 3000, seed=k)
    return [f"part{k}/{p}" for p in names]


def make_data(work: Path, n_images: int, size: int, workers: int) -> Path:
    """Synthetic 2500x3000 JPEGs in the CXR-LT layout (train.csv), cached at ``size`` px."""
    root = work / "data"
    parts = max(1, min(workers, n_images))
    with ProcessPoolExecutor(parts) as pool:
        paths = [p for ps in pool.map(_jpeg_part, [(root, k, n_images // parts) for k in range(parts)]) for p in ps]
    rng = np.random.default_rng(0)
    df = pd.DataFrame({c: [f"{c}{i}" for i in range(len(paths))] for c in CXR_LT_2023_METADATA})
    df["subject_id"] = np.arange(len(paths))
    df["path"] = paths
    for j, c in enumerate(CXR_LT_2023_CLASSES):
        df[c] = (rng.random(len(paths)) < 0.3).astype(int)
        df.loc[j % len(paths), c] = 1
    df.to_csv(root / "train.csv", index=False)
    build_cache(paths, root, work / "cache", size, workers=workers)
    return root


def datamodule(root: Path, work: Path, size: int, batch: int, samples: int) -> CXRDataModule:
    dm = CXRDataModule(
        format="cxr_lt",
        root=str(root),
        train_csv="train.csv",
        val_csv=None,  # carved (1% each): the same file in two splits is refused as leakage
        test_csv=None,
        split={"val_fraction": 0.01, "test_fraction": 0.01},
        image_size=size,
        cache_dir=str(work / "cache"),
        batch_size=batch,
        num_workers=default_workers(),
        sampler=functools.partial(RandomSampler, num_samples=samples),
    )
    dm.setup("fit")
    return dm


def loader_rate(dm: CXRDataModule, batches: int) -> float:
    """Images/s of the training loader alone (after its first batch: worker start-up excluded)."""
    it = iter(dm.train_dataloader())
    next(it)
    start, n = time.perf_counter(), 0
    for _ in range(batches):
        n += next(it)["image"].shape[0]
    return n / (time.perf_counter() - start)


def new_module(cfg: dict, ckpt: bool = False):
    module = build_module({**cfg["model"], "activation_checkpointing": ckpt})
    return module.to(DEV, memory_format=torch.channels_last).train()


def step_fn(module, batch: int, size: int):
    """One bf16-autocast training step (as Lightning's bf16-mixed) on a fixed device batch."""
    images = torch.randint(0, 256, (batch, 1, size, size), dtype=torch.uint8, device=DEV)
    target = (torch.rand(batch, len(module.classes), device=DEV) < 0.2).float()
    opt = _optimizer(module)
    params = [p for p in module.parameters() if p.requires_grad]

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = module.loss_fn(module.net(images), target).total
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()

    return step


def step_rate(cfg: dict, batch: int, size: int, steps: int) -> float:
    module = new_module(cfg)
    step = step_fn(module, batch, size)
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start)


def fit_rate(cfg: dict, dm: CXRDataModule, work: Path, warmup: int, steps: int) -> float:
    from hydra.utils import instantiate
    from lightning.pytorch.loggers import CSVLogger
    from omegaconf import OmegaConf

    module = new_module(cfg)
    clock = _Clock(warmup, warmup + steps, DEV)
    trainer = instantiate(
        OmegaConf.create(cfg["trainer"]),
        default_root_dir=str(work / "fit"),
        max_steps=warmup + steps,
        max_epochs=1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_model_summary=False,
        logger=CSVLogger(work / "fit"),
        callbacks=[ProgressBar(refresh_rate=10), clock],
    )
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, train_dataloaders=dm.train_dataloader())
    return dm.batch_size * steps / (clock.marks[1] - clock.marks[0])


def _free() -> None:
    gc.collect()
    torch.cuda.empty_cache()


def peak_memory(cfg: dict, batch: int, size: int, ckpt: bool) -> float:
    """GiB allocated at the peak of a step above weights and optimizer state."""
    module = new_module(cfg, ckpt)
    step = step_fn(module, batch, size)
    step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30
    del module, step
    _free()
    return peak


def _try_step(cfg: dict, batch: int, size: int, ckpt: bool) -> bool:
    try:
        step_fn(new_module(cfg, ckpt), batch, size)()
        torch.cuda.synchronize()
        return True
    except torch.cuda.OutOfMemoryError:
        return False


def fits(cfg: dict, batch: int, size: int, ckpt: bool) -> bool:
    """Whether one full training step at ``batch`` fits (everything of the trial freed before the next one)."""
    ok = _try_step(cfg, batch, size, ckpt)
    _free()
    return ok


def largest_batch(cfg: dict, size: int, ckpt: bool, deadline: float, limit: int = 2048) -> int:
    """Doubling then bisection on the batch size; stops early at ``deadline`` (returns what is known to fit)."""
    good, bad = 0, None
    b = 8
    while b <= limit and time.time() < deadline:
        if fits(cfg, b, size, ckpt):
            good, b = b, b * 2
        else:
            bad = b
            break
    while bad is not None and bad - good > max(1, good // 16) and time.time() < deadline:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if fits(cfg, mid, size, ckpt) else (good, mid)
    return good


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--batch", type=int, default=16, help="batch for throughput and memory")
    p.add_argument("--images", type=int, default=64, help="distinct synthetic JPEGs")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--budget", type=float, default=450.0, help="seconds; later parts are skipped after it")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA device", file=sys.stderr)
        return 2
    start = time.time()
    deadline = start + args.budget
    cfg = compose("resnet101", 4, "cuda")
    result: dict = {
        "device": torch.cuda.get_device_name(),
        "cpus": len(os.sched_getaffinity(0)),
        "workers": default_workers(),
        "size": args.size,
        "batch": args.batch,
        "model": cfg["model"]["backbone"]["_target_"] + " + " + ", ".join(["4 experts", "lse", "mha", "ride"]),
        "precision": cfg["trainer"]["precision"],
    }

    def report(key: str, value) -> None:
        result[key] = value
        result["seconds"] = round(time.time() - start, 1)
        print(f"{key}: {value}  ({result['seconds']} s)", file=sys.stderr)
        if args.out:
            args.out.write_text(json.dumps(result, indent=2))

    with tempfile.TemporaryDirectory(prefix="mlgcn_gpu_check_") as tmp:
        work = Path(tmp)
        root = make_data(work, args.images, args.size, len(os.sched_getaffinity(0)))
        report("data_ready_s", round(time.time() - start, 1))
        samples = args.batch * (args.steps + 12)
        dm = datamodule(root, work, args.size, args.batch, samples)
        report("loader_images_per_s", loader_rate(dm, min(args.steps, 20)))
        report("step_images_per_s", step_rate(cfg, args.batch, args.size, args.steps))
        _free()
        one = compose("resnet101", 1, "cuda")
        report("step_images_per_s_1expert", step_rate(one, args.batch, args.size, args.steps))
        report("experts4_vs_experts1", result["step_images_per_s_1expert"] / result["step_images_per_s"])
        _free()
        report("fit_images_per_s", fit_rate(cfg, dm, work, 5, args.steps))
        report("loader_vs_step", result["loader_images_per_s"] / result["step_images_per_s"])
        report("fit_vs_step", result["fit_images_per_s"] / result["step_images_per_s"])
        _free()
        for ckpt in (False, True):
            report(f"peak_gib_batch{args.batch}_ckpt_{ckpt}".lower(), peak_memory(cfg, args.batch, args.size, ckpt))
        torch.backends.cudnn.benchmark = False  # no autotuning for every trial batch size
        for ckpt in (False, True):
            if time.time() < deadline:
                report(f"largest_batch_ckpt_{ckpt}".lower(), largest_batch(cfg, args.size, ckpt, deadline))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
