"""Import a checkpoint of the authors' release into a checkpoint of this project (``release_faithful`` model).

    python -m mlgcn_lt.import_release checkpoint/mimic_tr/model_best.pth.tar \\
        --label-vectors data/mimic/mimic_glove_word2vec.pkl --out release.ckpt
    python -m mlgcn_lt.submit --ckpt release.ckpt --csv test.csv --root /data/cxr-lt --out submission.csv

The release saves ``{'state_dict': ...}`` of its model (ResNet-101 trunk ``features.*``, per expert a narrow layer4
``layer4s.N.*`` and a 2-layer GCN ``experts.N.gc1/gc2.weight``, the stored correlation matrix ``A``, and one
Transformer encoder layer ``transformer_encoder.layers.0.*`` shared by every expert; ``attention.*`` is the template
that ``nn.TransformerEncoder`` copies and is never used in the forward pass, so it is dropped). The label vectors
(C, 300) are a separate pickle (or ``.npy``). The output is a normal Lightning checkpoint: ``eval.py``,
``python -m mlgcn_lt.submit`` and ``python -m mlgcn_lt.report`` load it like one this project trained.

Mapping (docs/release.md): ``features.*`` → ``net.trunk.*`` (same Sequential layout), ``layer4s.N.*`` →
``net.experts.N.stage.*``, ``experts.N.gc1/gc2.weight`` → ``net.experts.N.head.gcn.layers.0/1.weight``,
``transformer_encoder.layers.0.*`` → every expert's (shared) ``head.attention.layer.*``, and the propagation matrix
Â = D^-½ Aᵀ D^-½ of the stored ``A`` (what the release recomputes in every forward) → each head's ``gcn.adjacency``.
The RGB stem is kept as it is: this project feeds the gray channel three times, which is what ``cv2.IMREAD_COLOR``
gives the release for a gray X-ray, so the result is exact.
"""

from __future__ import annotations

import argparse
import logging
import pickle
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import OmegaConf

from mlgcn_lt.data.classes import CXR_LT_2023_CLASSES, CXR_LT_2023_TRAIN_COUNTS
from mlgcn_lt.data.stats import LabelStats, group_sizes
from mlgcn_lt.models.gcn import normalize_adjacency
from mlgcn_lt.utils.checkpoints import CheckpointError, read_checkpoint
from mlgcn_lt.utils.io import atomic_write

log = logging.getLogger(__name__)

#: The release's image size (its images are stored at 1024 px).
RELEASE_IMAGE_SIZE = 1024


class ReleaseImportError(ValueError):
    """A release checkpoint or label-vector file that does not fit; the message names the file and the key."""


def read_release_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The model ``state_dict`` of a release checkpoint (``{'state_dict': ...}``, or a bare state dict); a
    ``module.`` prefix (DataParallel) is removed."""
    path = Path(path)
    try:  # the project's one checkpoint reader: names truncated / foreign files, never advises weights_only=False
        ckpt = read_checkpoint(path, what="release checkpoint", lightning=False)
    except CheckpointError as e:
        raise ReleaseImportError(str(e)) from None
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, Mapping) else None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ReleaseImportError(f"{path}: expected {{'state_dict': {{name: tensor}}}} as the release's engine saves")
    return {k.removeprefix("module."): v for k, v in state.items()}


def read_label_vectors(path: str | Path, num_classes: int) -> np.ndarray:
    """(C, d) label vectors from the release's pickle (or a ``.npy``); checked for shape and finiteness."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label-vector file not found: {path}")
    try:
        if path.suffix == ".npy":
            vectors = np.load(path, allow_pickle=False)
        else:
            with open(path, "rb") as f:
                vectors = pickle.load(f)  # the release's own file format; only open files you trust
    except Exception as e:
        raise ReleaseImportError(f"{path}: cannot read label vectors: {type(e).__name__}: {e}") from e
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != num_classes:
        raise ReleaseImportError(
            f"{path}: label vectors of shape {vectors.shape}, expected ({num_classes}, d) for the checkpoint's "
            f"{num_classes} classes"
        )
    if not np.isfinite(vectors).all():
        raise ReleaseImportError(f"{path}: label vectors contain NaN or inf")
    return vectors


def release_stats(classes: Sequence[str]) -> LabelStats:
    """Label statistics for the imported model: the release's checkpoint holds no label counts, so the CXR-LT 2023
    training counts are used when the classes are CXR-LT's (head / middle / tail groups as in the paper), zeros
    otherwise; the co-occurrence is zero (the adjacency comes from the checkpoint's ``A``)."""
    c = len(classes)
    known = all(name in CXR_LT_2023_TRAIN_COUNTS for name in classes)
    counts = np.array([CXR_LT_2023_TRAIN_COUNTS[n] for n in classes] if known else [0] * c, dtype=np.int64)
    n_head, n_tail = group_sizes(c)
    order = np.argsort(-counts, kind="stable")
    groups = {
        classes[j]: "head" if r < n_head else ("tail" if r >= c - n_tail else "middle") for r, j in enumerate(order)
    }
    return LabelStats(tuple(classes), counts, np.zeros((c, c), dtype=np.int64), 264849 if known else 0, groups)


def release_model_config(num_experts: int) -> dict[str, Any]:
    """The ``release_faithful`` model config (composed from ``conf/``) with ``num_experts``, as plain containers."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from mlgcn_lt.config import CONF_DIR, setup_config_system

    setup_config_system(CONF_DIR)
    was_initialized = GlobalHydra.instance().is_initialized()
    if was_initialized:
        raise RuntimeError("import_release composes its own config: call it outside a running Hydra application")
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
            cfg = compose(
                config_name="train",
                overrides=[
                    "+experiment=release_faithful",
                    f"model.num_experts={num_experts}",
                    "model.label_embedding.cache_dir=null",
                ],
            )
    finally:
        GlobalHydra.instance().clear()
    model = OmegaConf.to_container(cfg.model, resolve=True, enum_to_str=True)
    injected = ("stats", "data_info", "restore")  # set by the caller, like pipeline.build does
    return {k: v for k, v in model.items() if not k.startswith("_") and k not in injected}


_LAYER4 = re.compile(r"^layer4s\.(\d+)\.(.+)$")
_GCN = re.compile(r"^experts\.(\d+)\.gc([12])\.weight$")
_ENCODER = "transformer_encoder.layers.0."


def _num_experts(state: Mapping[str, torch.Tensor], path: str) -> int:
    stages = {int(m.group(1)) for k in state if (m := _LAYER4.match(k))}
    gcns = {int(m.group(1)) for k in state if (m := _GCN.match(k))}
    if not stages or stages != gcns or stages != set(range(len(stages))):
        raise ReleaseImportError(
            f"{path}: experts do not match: layer4s.N for N in {sorted(stages)}, experts.N.gc1/gc2 for N in "
            f"{sorted(gcns)} (expected the same 0..E-1 in both)"
        )
    return len(stages)


def map_release_state(
    state: Mapping[str, torch.Tensor], num_experts: int, path: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Release keys → this project's ``MultiExpertNet`` keys (see the module docstring); unknown keys are an error."""
    if "A" not in state:
        raise ReleaseImportError(f"{path}: no key 'A' (the release's stored correlation matrix)")
    adjacency = normalize_adjacency(state["A"].double(), transpose=True)
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state.items():
        if key.startswith("features."):
            out["trunk." + key.removeprefix("features.")] = value
        elif m := _LAYER4.match(key):
            out[f"experts.{m.group(1)}.stage.{m.group(2)}"] = value
        elif m := _GCN.match(key):
            out[f"experts.{m.group(1)}.head.gcn.layers.{int(m.group(2)) - 1}.weight"] = value
        elif key.startswith(_ENCODER):
            for e in range(num_experts):  # one layer shared by all experts: every expert's path holds it
                out[f"experts.{e}.head.attention.layer.{key.removeprefix(_ENCODER)}"] = value
        elif key == "A" or key.startswith("attention."):
            continue  # A: its propagation matrix is set below; attention.*: the unused template layer
        else:
            unknown.append(key)
    if unknown:
        raise ReleaseImportError(f"{path}: keys not in the release's model: {unknown[:10]} ({len(unknown)} keys)")
    for e in range(num_experts):
        out[f"experts.{e}.head.gcn.adjacency"] = adjacency
    return out


def release_name(key: str) -> str:
    """The release's name of one of this project's ``MultiExpertNet`` keys (for error messages)."""
    rules = [
        (r"^trunk\.(.+)$", r"features.\1"),
        (r"^experts\.(\d+)\.stage\.(.+)$", r"layer4s.\1.\2"),
        (r"^experts\.(\d+)\.head\.gcn\.layers\.0\.weight$", r"experts.\1.gc1.weight"),
        (r"^experts\.(\d+)\.head\.gcn\.layers\.1\.weight$", r"experts.\1.gc2.weight"),
        (r"^experts\.\d+\.head\.attention\.layer\.(.+)$", _ENCODER + r"\1"),
    ]
    for pattern, repl in rules:
        if re.match(pattern, key):
            return re.sub(pattern, repl, key)
    return key


def import_release(
    checkpoint: str | Path,
    label_vectors: str | Path,
    out: str | Path,
    *,
    classes: Sequence[str] | None = None,
    image_size: int = RELEASE_IMAGE_SIZE,
) -> Path:
    """Convert a release checkpoint + label vectors into a Lightning checkpoint of the ``release_faithful`` model."""
    from mlgcn_lt.training.module import MLGCNModule

    state = read_release_state(checkpoint)
    num_experts = _num_experts(state, str(checkpoint))
    if "A" not in state or state["A"].dim() != 2 or state["A"].shape[0] != state["A"].shape[1]:
        raise ReleaseImportError(f"{checkpoint}: no square key 'A' (the release's stored correlation matrix)")
    c = int(state["A"].shape[0])
    if classes is None:
        if c != len(CXR_LT_2023_CLASSES):
            raise ReleaseImportError(f"{checkpoint}: {c} classes (not CXR-LT 2023's 26): pass --classes")
        classes = CXR_LT_2023_CLASSES
    classes = list(classes)
    if len(classes) != c:
        raise ReleaseImportError(f"{checkpoint}: 'A' is {c} x {c} but {len(classes)} class names were given")
    vectors = read_label_vectors(label_vectors, c)
    mapped = map_release_state(state, num_experts, str(checkpoint))
    for e in range(num_experts):
        mapped[f"experts.{e}.head.gcn.label_vectors"] = torch.from_numpy(vectors)
    model = MLGCNModule(
        **release_model_config(num_experts),
        stats=release_stats(classes).to_dict(),
        data_info={"format": "cxr_lt", "image_size": int(image_size), "classes": classes},
        restore={"label_dim": int(vectors.shape[1])},
    )
    expected = model.net.state_dict()
    missing = sorted({release_name(k) for k in set(expected) - set(mapped)})
    if missing:
        raise ReleaseImportError(f"{checkpoint}: missing keys {missing[:10]} ({len(missing)} keys)")
    wrong = [
        f"{k}: {tuple(mapped[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items() if mapped[k].shape != v.shape
    ]
    if wrong:
        raise ReleaseImportError(f"{checkpoint}: shapes differ from the release_faithful model: {wrong[:5]}")
    model.net.load_state_dict({k: mapped[k].to(expected[k].dtype) for k in expected}, strict=True)
    ckpt: dict[str, Any] = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "pytorch-lightning_version": L.__version__,
        "epoch": 0,
        "global_step": 0,
        "imported_from": {"checkpoint": str(checkpoint), "label_vectors": str(label_vectors)},
    }
    model.on_save_checkpoint(ckpt)  # plain containers + restore info, as a trained checkpoint has
    return atomic_write(Path(out), lambda f: torch.save(ckpt, f), mode="wb")


def _classes_arg(value: str | None) -> list[str] | None:
    if value is None:
        return None
    path = Path(value)
    if path.is_file():
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return [c.strip() for c in value.split(",") if c.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlgcn_lt.import_release", description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="the release's checkpoint ({'state_dict': ...}, e.g. model_best.pth.tar)")
    parser.add_argument("--label-vectors", required=True, help="the release's (C, 300) label-vector pickle (or .npy)")
    parser.add_argument("--out", required=True, help="Lightning checkpoint to write (.ckpt)")
    parser.add_argument(
        "--classes", help="class names in the release's column order: comma-separated or a file (default: CXR-LT 2023)"
    )
    parser.add_argument(
        "--image-size", type=int, default=RELEASE_IMAGE_SIZE, help="image size recorded for evaluation (1024)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        out = import_release(
            args.checkpoint,
            args.label_vectors,
            args.out,
            classes=_classes_arg(args.classes),
            image_size=args.image_size,
        )
    except (ReleaseImportError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
