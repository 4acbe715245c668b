"""Peak memory of one training step, with and without activation checkpointing, each in a fresh process.

On CUDA: ``torch.cuda.max_memory_allocated`` above what is allocated before the step. On the CPU: the peak resident
set (``VmHWM``, reset through ``/proc/self/clear_refs``) above the resident set before the step, with glibc's
``mmap`` threshold fixed low so freed tensors go back to the system and the resident set follows the live tensors.
Both count activations, gradients (``grads_mib``, fp32) and temporaries; weights and optimizer state (allocated by a
first step) are the baseline. Activations grow with the image size, gradients do not: measure at a large size.
"""

from __future__ import annotations

import gc
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

from mlgcn_lt.bench.step import _optimizer, build_module, compose

_ROOT = Path(__file__).resolve().parents[2]


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M).group(1))


def child(args: dict) -> dict:
    """One warm-up step, then the measured step; returns the peak above the pre-step baseline in MiB."""
    torch.set_num_threads(args["threads"])
    dev = torch.device(args["device"])
    cfg = compose(
        args["backbone"], args["experts"], args["device"], args["overrides"], activation_checkpointing=args["ckpt"]
    )
    module = build_module(cfg["model"]).to(dev).train()
    opt = _optimizer(module)
    images = torch.randint(0, 256, (args["batch"], 1, args["size"], args["size"]), dtype=torch.uint8, device=dev)
    target = (torch.rand(args["batch"], len(module.classes), device=dev) < 0.2).float()
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")

    def step() -> None:
        with amp:
            loss = module.loss_fn(module.net(images), target).total
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    gc.collect()
    grads = {"grads_mib": sum(p.numel() * 4 for p in module.parameters() if p.requires_grad) / 2**20}
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        step()
        torch.cuda.synchronize(dev)
        return {
            "peak_mib": (torch.cuda.max_memory_allocated(dev) - base) / 2**20,
            "baseline_mib": base / 2**20,
            **grads,
        }
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set
    base = _status_kb("VmRSS")
    step()
    return {"peak_mib": (_status_kb("VmHWM") - base) / 1024, "baseline_mib": base / 1024, **grads}


def measure_memory(**args) -> dict:
    """Peak step memory without / with ``model.activation_checkpointing`` (fresh process each) and their ratio
    (also of the part above the gradients: activations and temporaries)."""
    env = {
        **os.environ,
        "MALLOC_MMAP_THRESHOLD_": "65536",
        "PYTHONPATH": os.pathsep.join([str(_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    out = {}
    for ckpt in (False, True):
        proc = subprocess.run(
            [sys.executable, "-m", "mlgcn_lt.bench.memory", json.dumps({**args, "ckpt": ckpt})],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"memory measurement failed:\n{proc.stderr[-3000:]}")
        out["checkpointing" if ckpt else "plain"] = json.loads(proc.stdout.strip().splitlines()[-1])
    out["checkpointing_vs_plain"] = out["checkpointing"]["peak_mib"] / out["plain"]["peak_mib"]
    above = [out[k]["peak_mib"] - out[k]["grads_mib"] for k in ("checkpointing", "plain")]
    out["checkpointing_vs_plain_above_grads"] = above[0] / above[1] if above[1] > 0 else None
    return out


if __name__ == "__main__":
    print(json.dumps(child(json.loads(sys.argv[1]))))
