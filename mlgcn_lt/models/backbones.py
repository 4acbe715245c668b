"""Backbones split into a shared *trunk* and a *last stage* that each expert owns a copy of.

``pretrained``: ``none`` (random init), ``imagenet`` (torchvision's default ImageNet weights: read from the torch hub
cache, downloaded there once per node when missing, see :func:`imagenet_weights_file`), or a path to a local
``state_dict`` file (``.pt`` / ``.pth``). ``if_unavailable``: what to do when the ImageNet weights can be neither
found nor downloaded (``error``: stop with instructions; ``random``: warn and start from a random init).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torchvision
from torch import nn

log = logging.getLogger(__name__)

#: ImageNet mean / std (RGB); a grayscale image is replicated over the three channels before normalising.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class InputNormalizer(nn.Module):
    """uint8 (B, 1, H, W) → float (B, 3, H, W) normalised, on the device (see ``data/images.py``).

    ``mode="imagenet"`` uses ImageNet statistics (right for pretrained weights); ``"unit"`` divides by 255 only
    (the authors' release).
    """

    def __init__(self, channels: int = 3, mode: Literal["imagenet", "unit"] = "imagenet") -> None:
        super().__init__()
        mean = torch.tensor(IMAGENET_MEAN if mode == "imagenet" else (0.0,) * 3)[:channels]
        std = torch.tensor(IMAGENET_STD if mode == "imagenet" else (1.0,) * 3)[:channels]
        self.channels = channels
        # Folded into one multiply-add: (x / 255 - mean) / std = x * scale + shift.
        self.register_buffer("scale", (1.0 / (255.0 * std)).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("shift", (-mean / std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In the buffers' dtype: float32, or bfloat16 / float16 under trainer.precision=*-true (0..255 is exact).
        if x.dtype == torch.uint8:
            x = x.to(self.scale.dtype)
        else:  # already a float image in [0, 1]
            x = x.to(self.scale.dtype) * 255.0
        if x.shape[1] == 1 and self.channels != 1:
            x = x.expand(-1, self.channels, -1, -1)
        return torch.addcmul(self.shift, x, self.scale)


@dataclass
class TrunkSplit:
    """A backbone cut in two: ``trunk`` (shared) and ``last_stage`` (copied per expert)."""

    trunk: nn.Module
    last_stage: nn.Module
    num_features: int  # channels out of the last stage
    trunk_features: int  # channels out of the trunk
    reduction: int  # total stride of trunk + last stage
    name: str
    #: Builds a freshly initialised last stage with ``width`` output channels (the release's 512-wide experts).
    make_stage: Callable[[int], nn.Module] | None = None


class _NarrowBottleneck(torchvision.models.resnet.Bottleneck):
    """A bottleneck block without the ×4 expansion (the release's experts: 512 channels out of ResNet-101)."""

    expansion = 1


def _resnet_stage(model: torchvision.models.ResNet, width: int) -> nn.Module:
    """A new, randomly initialised layer4 of ``model`` whose blocks output ``width`` channels."""
    block = model.layer4[0]
    kind = _NarrowBottleneck if isinstance(block, torchvision.models.resnet.Bottleneck) else type(block)
    saved = model.inplanes
    model.inplanes = block.conv1.in_channels
    try:
        return model._make_layer(kind, width, len(model.layer4), stride=2)
    finally:
        model.inplanes = saved


def _resnet_split(model: torchvision.models.ResNet, name: str) -> TrunkSplit:
    trunk = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool, model.layer1, model.layer2, model.layer3)
    last = model.layer4
    return TrunkSplit(
        trunk=trunk,
        last_stage=last,
        num_features=model.fc.in_features,
        trunk_features=model.layer4[0].conv1.in_channels,
        reduction=32,
        name=name,
        make_stage=functools.partial(_resnet_stage, model),
    )


def _densenet_split(model: torchvision.models.DenseNet, name: str) -> TrunkSplit:
    """Trunk: features up to transition3 (stride 32 already); last stage: denseblock4 + norm5 + ReLU (the ReLU
    DenseNet's forward applies after ``features``)."""
    children = list(model.features.named_children())
    cut = [n for n, _ in children].index("denseblock4")
    last = nn.Sequential(OrderedDict([*children[cut:], ("relu5", nn.ReLU(inplace=False))]))
    return TrunkSplit(
        trunk=nn.Sequential(OrderedDict(children[:cut])),
        last_stage=last,
        num_features=model.classifier.in_features,
        trunk_features=model.features.transition3.conv.out_channels,
        reduction=32,
        name=name,
    )


def _convnext_split(model: torchvision.models.ConvNeXt, name: str) -> TrunkSplit:
    """Trunk: stem + stages 1-3 with their downsamples (features[0..5], stride 16); last stage: the last downsample
    (LayerNorm2d + 2×2 conv) + stage 4 (features[6..7]). The pretrained classifier's LayerNorm, which torchvision
    applies after pooling, is not used."""
    return TrunkSplit(
        trunk=model.features[:6],
        last_stage=model.features[6:],
        num_features=model.classifier[-1].in_features,
        trunk_features=model.features[6][1].in_channels,
        reduction=32,
        name=name,
    )


def _efficientnet_split(model: torchvision.models.EfficientNet, name: str) -> TrunkSplit:
    """Trunk: features[0..5] (stride 16); last stage: the last stride-2 block group (features[6]) + the 1×1 head
    conv (features[7]); for EfficientNetV2-S 160 → 256 → 1280 channels."""
    return TrunkSplit(
        trunk=model.features[:6],
        last_stage=model.features[6:],
        num_features=model.classifier[-1].in_features,
        trunk_features=model.features[6][0].block[0][0].in_channels,
        reduction=32,
        name=name,
    )


#: name → (torchvision builder, splitter). New families add one entry and one splitter.
_REGISTRY: dict[str, tuple[Callable[..., nn.Module], Callable[[nn.Module, str], TrunkSplit]]] = {
    "resnet18": (torchvision.models.resnet18, _resnet_split),
    "resnet34": (torchvision.models.resnet34, _resnet_split),
    "resnet50": (torchvision.models.resnet50, _resnet_split),
    "resnet101": (torchvision.models.resnet101, _resnet_split),
    "densenet121": (torchvision.models.densenet121, _densenet_split),
    "convnext_tiny": (torchvision.models.convnext_tiny, _convnext_split),
    "convnext_small": (torchvision.models.convnext_small, _convnext_split),
    "efficientnet_v2_s": (torchvision.models.efficientnet_v2_s, _efficientnet_split),
}

#: torchvision's DenseNet checkpoints name layers ``norm.1``; the modules are ``norm1`` (torchvision remaps too).
_DENSENET_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\.(?:weight|bias|running_mean|running_var))$")


def _fix_keys(name: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-family renaming of checkpoint keys to the module names."""
    if name.startswith("densenet"):
        return {(_DENSENET_KEY.sub(r"\1\2", k)): v for k, v in state.items()}
    return state


def available_backbones() -> list[str]:
    return sorted(_REGISTRY)


class WeightsUnavailable(FileNotFoundError):
    """ImageNet weights neither in the torch hub cache nor downloadable; the message says what to do."""


def _download(url: str, dst: Path) -> None:
    """Fetch ``url`` into ``dst`` with torch's downloader (temporary file, then rename: never a partial ``dst``),
    checking the SHA-256 prefix that torchvision puts in the file name."""
    match = torch.hub.HASH_REGEX.search(dst.name)
    torch.hub.download_url_to_file(url, str(dst), hash_prefix=match.group(1) if match else None, progress=False)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if needed): processes of a node (DDP ranks) take turns."""
    with open(path, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def imagenet_weights_file(name: str) -> Path:
    """The torch hub cache file of ``name``'s default ImageNet weights, downloaded there if missing.

    The download happens once per node: the first process to take a lock next to the file downloads it, the others
    (the other DDP ranks) wait on the lock and then find the file. A failure raises :class:`WeightsUnavailable`
    with where to put the file by hand, or how to use a local file or no weights instead.
    """
    weights = torchvision.models.get_model_weights(name).DEFAULT
    hub = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    if hub.is_file():
        return hub
    try:
        hub.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(hub.with_name(hub.name + ".lock")):
            if not hub.is_file():  # another process may have fetched it while this one waited for the lock
                log.info("downloading ImageNet weights for %s from %s to %s", name, weights.url, hub)
                _download(weights.url, hub)
    except Exception as e:  # no network, proxy, read-only cache, hash mismatch: all end in the same advice
        raise WeightsUnavailable(
            f"ImageNet weights for {name} are not available offline and could not be downloaded "
            f"({type(e).__name__}: {e}): expected {hub} (download {weights.url} there on a machine with internet), "
            f"or set model.backbone.pretrained=/path/to/{name}.pth, or model.backbone.pretrained=none, or "
            "model.backbone.if_unavailable=random to start from a random init with a warning"
        ) from e
    if not hub.is_file():
        raise WeightsUnavailable(f"the download of {weights.url} left no file at {hub}")
    return hub


def _load_weights(model: nn.Module, name: str, pretrained: str, if_unavailable: str = "error") -> None:
    if pretrained == "none":
        return
    if pretrained == "imagenet":
        try:
            path = imagenet_weights_file(name)
        except WeightsUnavailable as e:
            if if_unavailable != "random":
                raise
            log.warning("%s; model.backbone.if_unavailable=random: %s starts from a RANDOM init", e, name)
            return
        state = torch.load(path, map_location="cpu", weights_only=True)
    else:
        path = Path(os.path.expanduser(pretrained))
        if not path.is_file():
            raise FileNotFoundError(
                f"model.backbone.pretrained={pretrained!r}: no such file (expected 'none', 'imagenet' or a local "
                "state_dict path)"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
    try:
        result = model.load_state_dict(_fix_keys(name, state), strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"{pretrained}: weights do not fit {name}: {e}") from e
    # The ImageNet classifier (``fc`` or ``classifier``, whatever its layout in the family) is never used.
    classifier = {k for k in model.state_dict() if k.split(".")[0] in ("fc", "classifier")}
    missing = [k for k in result.missing_keys if k not in classifier]
    if missing:
        raise ValueError(f"{pretrained}: weights do not fit {name}; missing {missing[:5]} ({len(missing)} keys)")
    if result.unexpected_keys:
        log.warning(
            "%s: ignored %d unexpected keys, e.g. %s",
            pretrained,
            len(result.unexpected_keys),
            result.unexpected_keys[:3],
        )


def build_backbone(
    name: str, pretrained: str = "none", if_unavailable: Literal["error", "random"] = "error"
) -> TrunkSplit:
    """Build torchvision ``name`` (weights per ``pretrained``) and split it into trunk and last stage.

    ``if_unavailable``: with ``pretrained=imagenet``, what happens when the weights are neither cached nor
    downloadable: ``error`` (the message says where to put the file) or ``random`` (a warning, then random init).
    """
    if name not in _REGISTRY:
        raise KeyError(f"unknown backbone {name!r}; known: {available_backbones()}")
    if if_unavailable not in ("error", "random"):
        raise ValueError(f"model.backbone.if_unavailable={if_unavailable!r}; expected one of ['error', 'random']")
    model = _REGISTRY[name][0](weights=None)
    _load_weights(model, name, pretrained, str(if_unavailable))
    return split_backbone(model, name)


def split_backbone(model: nn.Module, name: str) -> TrunkSplit:
    """Split a torchvision ``name`` model (its own modules, weights kept) into trunk and last stage."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown backbone {name!r}; known: {available_backbones()}")
    return _REGISTRY[name][1](model, name)
