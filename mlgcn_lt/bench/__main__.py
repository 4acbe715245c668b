"""``python -m mlgcn_lt.bench [--json] [--quick] [--backbone ...] [--image-size ...] [model overrides]``.

Measures in one run, side by side: loader samples/s per worker (naive vs ours vs cache, at ``--loader-size`` from
synthetic full-size JPEGs), ms per training step (plain PyTorch vs the framework; 1 vs ``--experts`` experts) and
peak step memory with and without activation checkpointing. Prints a table, and with ``--json`` the JSON object on
stdout (the table then goes to stderr). Figures are medians over ``--repeats`` interleaved rounds.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

#: Targets of the issue (ratios): at least / at most.
TARGETS = {
    "loader_speedup_ours_vs_naive": (">=", 2.0),
    "loader_speedup_cache_vs_naive": (">=", 10.0),
    "step_overhead_vs_plain": ("<=", 1.05),
    "experts4_vs_experts1": ("<=", 1.3),
}
QUICK = {
    "backbone": "resnet18",
    "image_size": 32,
    "batch": 2,
    "warmup": 1,
    "steps": 2,
    "repeats": 1,
    "loader_size": 64,
    "jpeg_size": "320x256",
    "loader_images": 2,
    "loader_samples": 2,
    "loader_seconds": 0.0,
    "memory_size": 32,
    "experts_size": 32,
    "experts_steps": 2,
}


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="python -m mlgcn_lt.bench", description=__doc__.split("\n\n")[1])
    p.add_argument("--json", action="store_true", help="print the JSON object on stdout (table on stderr)")
    p.add_argument("--quick", action="store_true", help="tiny settings that finish in seconds (a smoke test)")
    p.add_argument("--only", default="loader,step,memory", help="sections to run (comma-separated)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: 1 on cpu, steadier)")
    g = p.add_argument_group("step and memory")
    g.add_argument("--backbone", default="resnet101")
    g.add_argument("--image-size", type=int, default=256)
    g.add_argument("--batch", type=int, default=2)
    g.add_argument("--experts", type=int, default=4)
    g.add_argument("--warmup", type=int, default=2)
    g.add_argument("--steps", type=int, default=10, help="timed steps per run (the framework logs every 10)")
    g.add_argument("--repeats", type=int, default=3)
    g.add_argument("--experts-size", type=int, default=512, help="image size of the 1 vs N experts measurement")
    g.add_argument("--experts-steps", type=int, default=3, help="timed steps per run of the experts measurement")
    g.add_argument("--memory-size", type=int, default=512, help="image size of the memory measurement")
    g = p.add_argument_group("loader")
    g.add_argument("--loader-size", type=int, default=1024, help="training image size")
    g.add_argument("--jpeg-size", default="2500x3000", help="WxH of the synthetic source JPEGs")
    g.add_argument("--loader-images", type=int, default=4, help="distinct JPEGs written")
    g.add_argument("--loader-samples", type=int, default=8, help="samples per path and round (at least)")
    g.add_argument("--loader-seconds", type=float, default=1.0, help="seconds per path and round (at least)")
    args, overrides = p.parse_known_args(argv)
    if args.quick:
        given = {a.split("=")[0].lstrip("-").replace("-", "_") for a in (argv or sys.argv[1:]) if a.startswith("--")}
        for k, v in QUICK.items():
            if k not in given:
                setattr(args, k, v)
    bad = [o for o in overrides if o.startswith("-")]
    if bad:
        p.error(f"unrecognized arguments: {' '.join(bad)}")
    return args, overrides


def _row(label: str, value: float, unit: str, note: str = "") -> str:
    return f"  {label:<58} {value:>10.1f} {unit:<8} {note}"


def table(r: dict) -> str:
    lines = [f"mlgcn-lt bench: {r['machine']}"]
    if "loader" in r:
        lo = r["loader"]
        rate = lo["samples_per_s_per_worker"]
        w, h = lo["jpeg_size"]
        lines.append(f"loader: {lo['image_size']} px from {w}x{h} JPEGs ({lo['jpeg_mb_mean']:.1f} MB), per worker")
        lines.append(_row("naive: RGB decode, resize, float tensor augmentation", rate["naive"], "img/s"))
        x = lo["loader_speedup_ours_vs_naive"]
        lines.append(
            _row("ours: draft decode to 8-bit gray, resize, 8-bit augmentation", rate["ours"], "img/s", f"{x:.1f}x")
        )
        x = lo["loader_speedup_cache_vs_naive"]
        lines.append(_row("cache (data.cache_dir) + 8-bit augmentation", rate["cache"], "img/s", f"{x:.1f}x"))
        aug = lo["augment_ms"]
        lines.append(_row("augmentation alone: ours (cv2 warp + LUT)", aug["ours_8bit_one_pass"], "ms"))
        lines.append(_row("augmentation alone: torchvision on the PIL 'L' image", aug["torchvision_on_pil_L"], "ms"))
        lines.append(_row("preprocessing (decode + resize + write), per image", lo["preprocess_ms_per_image"], "ms"))
    if "step" in r:
        st = r["step"]
        ms, e = st["ms_per_step"], st["experts"]
        lines.append(
            f"step: {st['backbone']}, {st['image_size']} px, batch {st['batch']}, {st['device']} "
            f"({st['precision']}, {st['threads']} threads), median of {st['repeats']} x {st['steps']} steps"
        )
        lines.append(_row(f"plain PyTorch loop, {e} experts", ms["plain"], "ms"))
        x = st["step_overhead_vs_plain"]
        lines.append(
            _row(f"framework (Lightning Trainer + MLGCNModule), {e} experts", ms["framework"], "ms", f"{x:.3f}x")
        )
        x = st[f"experts{e}_vs_experts1"]
        flops = ", ".join(f"{k} {v:.2f}x" for k, v in st[f"experts{e}_vs_experts1_flops"].items())
        lines.append(
            f"experts: plain loop at {st['experts_image_size']} px, median of {st['repeats']} x "
            f"{st['experts_steps']} steps (training FLOPs {e}/1: {flops})"
        )
        lines.append(_row(f"{e} experts", ms[f"plain_{e}experts"], "ms"))
        lines.append(_row("1 expert", ms["plain_1expert"], "ms", f"{e}/1: {x:.2f}x"))
    if "memory" in r:
        m = r["memory"]
        lines.append(
            f"memory: peak of one training step above weights + optimizer state, {m['image_size']} px, "
            f"batch {m['batch']} (gradients: {m['plain']['grads_mib']:.0f} MiB of it)"
        )
        lines.append(_row("without activation checkpointing", m["plain"]["peak_mib"], "MiB"))
        x, y = m["checkpointing_vs_plain"], m["checkpointing_vs_plain_above_grads"]
        note = f"{x:.2f}x ({y:.2f}x above the gradients)" if y is not None else f"{x:.2f}x"
        lines.append(_row("model.activation_checkpointing=true", m["checkpointing"]["peak_mib"], "MiB", note))
    lines.append("targets: " + ", ".join(f"{k} {op} {v}: {_verdict(r, k)}" for k, (op, v) in TARGETS.items()))
    return "\n".join(lines)


def _verdict(r: dict, key: str) -> str:
    if r.get(key) is None:
        return "not run"
    op, limit = TARGETS[key]
    ok = r[key] >= limit if op == ">=" else r[key] <= limit
    return f"{r[key]:.3g} {'ok' if ok else 'MISSED'}"


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse(argv)
    sections = set(args.only.split(","))
    if args.device == "cpu" or args.threads:
        torch.set_num_threads(args.threads or 1)
    out = sys.stderr if args.json else sys.stdout
    start = time.time()
    result: dict = {
        "machine": f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} CPUs, torch {torch.__version__}"
        + (f", {torch.cuda.get_device_name()}" if args.device == "cuda" else ""),
        "command": " ".join(["python -m mlgcn_lt.bench", *(argv if argv is not None else sys.argv[1:])]),
    }
    with tempfile.TemporaryDirectory(prefix="mlgcn_bench_") as tmp:
        work = Path(tmp)
        if "loader" in sections:
            from mlgcn_lt.bench.loader import measure_loader

            w, h = (int(v) for v in args.jpeg_size.lower().split("x"))
            result["loader"] = measure_loader(
                work / "loader",
                size=args.loader_size,
                jpeg_size=(w, h),
                n_images=args.loader_images,
                samples=args.loader_samples,
                min_seconds=args.loader_seconds,
                repeats=args.repeats,
            )
            print(f"loader done ({time.time() - start:.0f} s)", file=sys.stderr)
        shared = dict(backbone=args.backbone, batch=args.batch, experts=args.experts, device=args.device)
        if "step" in sections:
            from mlgcn_lt.bench.step import measure_step

            result["step"] = measure_step(
                work / "step",
                size=args.image_size,
                experts_size=args.experts_size,
                experts_steps=args.experts_steps,
                warmup=args.warmup,
                steps=args.steps,
                repeats=args.repeats,
                overrides=overrides,
                log=lambda s: print(s, file=sys.stderr),
                **shared,
            )
            print(f"step done ({time.time() - start:.0f} s)", file=sys.stderr)
        if "memory" in sections:
            from mlgcn_lt.bench.memory import measure_memory

            result["memory"] = measure_memory(
                size=args.memory_size, overrides=overrides, threads=torch.get_num_threads(), **shared
            )
            result["memory"].update(image_size=args.memory_size, batch=args.batch)
    for key in TARGETS:
        section = "loader" if key.startswith("loader") else "step"
        result[key] = result.get(section, {}).get(key)
    result["seconds"] = round(time.time() - start, 1)
    print(table(result), file=out)
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
