"""The image tower inference runs: a frozen ResNet's BatchNorms folded into its convolutions, channels-last.

:func:`inference_tower` is what a :class:`mvpseg.Segmenter` runs (``InferenceConfig.fold_batchnorm`` and
``channels_last``); ViT towers are used as they are. The CLIP's own tower is never changed.
"""

from __future__ import annotations

import copy

import torch
from open_clip.modified_resnet import ModifiedResNet
from torch import nn

__all__ = ["fold_batchnorm", "inference_tower"]


def fold_batchnorm(visual: nn.Module) -> nn.Module:
    """A copy of a frozen image tower with every ``BatchNorm2d`` folded into the convolution before it.

    In eval mode a BatchNorm is an affine map per channel, ``y = (x - mean) / sqrt(var + eps) * gamma + beta``,
    so ``bn(conv(x))`` equals one convolution with scaled weights and a bias: one pass over the
    activations less per BatchNorm. The result equals the original up to float rounding. Pairs are
    found by open_clip's names (``convN`` then ``bnN``; ``0`` then ``1`` in a downsampling branch);
    a BatchNorm without a convolution before it is kept.

    Args:
        visual: an image tower (e.g. open_clip's ``ModifiedResNet``); it is not changed.

    Returns:
        The folded copy, in eval mode, without gradients.
    """
    folded = copy.deepcopy(visual).eval().requires_grad_(False)
    for module in folded.modules():
        children = dict(module.named_children())
        for name, norm in children.items():
            if not isinstance(norm, nn.BatchNorm2d) or norm.running_mean is None or norm.running_var is None:
                continue
            conv_name = "conv" + name[2:] if name.startswith("bn") else str(int(name) - 1) if name.isdigit() else ""
            conv = children.get(conv_name)
            if not isinstance(conv, nn.Conv2d):
                continue
            with torch.no_grad():
                gamma = norm.weight if norm.weight is not None else torch.ones_like(norm.running_var)
                beta = norm.bias if norm.bias is not None else torch.zeros_like(norm.running_mean)
                scale = gamma / torch.sqrt(norm.running_var + norm.eps)  # (out,)
                bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
                conv.weight.copy_(conv.weight * scale[:, None, None, None])
                conv.bias = nn.Parameter((bias - norm.running_mean) * scale + beta, requires_grad=False)
            setattr(module, name, nn.Identity())
    return folded


def inference_tower(visual: nn.Module, fold: bool = True, channels_last: bool = True) -> nn.Module:
    """The image tower as inference runs it: for ResNets a copy with BatchNorms folded and NHWC weights.

    :func:`dense_features` gives the same features (to float rounding) with either tower; the
    caller's tower is never changed. Other towers are returned as they are.

    Args:
        visual: an open_clip image tower.
        fold: fold the frozen BatchNorms into their convolutions (:func:`fold_batchnorm`).
        channels_last: NHWC weights (faster convolutions with oneDNN and cuDNN).
    """
    if not isinstance(visual, ModifiedResNet):
        return visual
    if fold:
        visual = fold_batchnorm(visual)
    if channels_last:
        if not fold:
            visual = copy.deepcopy(visual)  # the caller's CLIP keeps its memory format
        visual = visual.to(memory_format=torch.channels_last)
    return visual
