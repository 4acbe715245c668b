"""Class activation maps of an :class:`~mlgcn_lt.models.experts.MultiExpertNet`, one (H, W) map per class.

``gcn_cam``: the model's own map. Each expert's feature map (B, D, h, w) is scored at every location by that
expert's classifiers (C, D) — the GCN's (or the linear head's) after the attention layer: shared when the attention
leaves them image-independent, per image (B, C, D) for ``mha`` — then averaged over experts and bilinearly upsampled
to the image. It is what the classifier sees before pooling (for max pooling the logit is exactly the map's maximum;
for LSE a soft maximum), so it costs one forward pass for all classes. Heads without a classifier matrix (csra,
ml_decoder) have no such map: use a Grad-CAM method.

``gradcam`` / ``gradcam++`` / ``eigencam``: the ``grad-cam`` package (pytorch_grad_cam) on the ensemble logit, with
every expert's last stage as a target layer. The ensemble logit is the mean of the experts' logits, so each
expert's layer gets the gradient of its own share; the package normalises each layer's map to [0, 1] and averages
them — the Grad-CAM analogue of ``gcn_cam``'s mean over experts, and it works for any head, pooling or attention.
``eigencam`` is class-agnostic (the first principal component of the activations): the same map for every class.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mlgcn_lt.models.experts import MultiExpertNet

METHODS = ("gcn_cam", "gradcam", "gradcam++", "eigencam")


def classifier_matrix(head: nn.Module) -> torch.Tensor:
    """The (C, D) classifier matrix of a GCN or linear head; a clear error for heads that have none."""
    classifiers = getattr(head, "classifiers", None)
    if callable(classifiers) and not isinstance(classifiers, torch.Tensor):
        return classifiers()  # GCNHead: the GCN's output
    fc = getattr(head, "fc", None)
    if isinstance(fc, nn.Linear):
        return fc.weight  # LinearHead
    raise ValueError(
        f"--method gcn_cam needs a head with a (C, D) classifier matrix (gcn or linear); the "
        f"{type(head).__name__} head has none: use --method gradcam (or gradcam++, eigencam)"
    )


@torch.no_grad()
def gcn_cam(net: MultiExpertNet, images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) maps of ``images`` (B, 1, H, W), uint8 or float in [0, 1]: see the module docstring."""
    shared = net.trunk(net.normalize(images))
    maps = []
    for expert in net.experts:
        fmap = expert.stage(shared)
        head = expert.head
        weights = classifier_matrix(head).to(fmap.dtype)
        attention = getattr(head, "attention", None)
        if attention is not None:
            _, weights = attention(head.pooling(fmap), weights)
        pattern = "bdhw,cd->bchw" if weights.dim() == 2 else "bdhw,bcd->bchw"
        maps.append(torch.einsum(pattern, fmap, weights).float())
    cam = torch.stack(maps).mean(0)
    return F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)


class EnsembleLogits(nn.Module):
    """The ensemble logits (B, C) of a :class:`MultiExpertNet`, as the plain classifier pytorch_grad_cam expects."""

    def __init__(self, net: MultiExpertNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images).logits.float()


def grad_cam(net: MultiExpertNet, images: torch.Tensor, class_indices: Sequence[int], method: str) -> torch.Tensor:
    """(B, len(class_indices), H, W) maps in [0, 1] from the ``grad-cam`` package (see the module docstring)."""
    from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    kinds = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "eigencam": EigenCAM}
    if method not in kinds:
        raise ValueError(f"unknown method {method!r}; known: {list(METHODS)}")
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    layers = [expert.stage for expert in net.experts]
    with kinds[method](model=EnsembleLogits(net), target_layers=layers) as cam:
        # the input requires a gradient, so gradients reach the expert stages even when they are frozen (cRT)
        cam.compute_input_gradient = True
        maps = []
        for c in class_indices:
            targets = [ClassifierOutputTarget(int(c))] * x.shape[0]
            maps.append(torch.from_numpy(cam(input_tensor=x, targets=targets)).float())
    return torch.stack(maps, dim=1)


def class_maps(net: MultiExpertNet, images: torch.Tensor, class_indices: Sequence[int], method: str) -> torch.Tensor:
    """(B, len(class_indices), H, W) maps of ``method`` for the given classes."""
    if method == "gcn_cam":
        return gcn_cam(net, images)[:, list(class_indices)]
    return grad_cam(net, images, class_indices, method)
