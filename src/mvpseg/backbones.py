"""The student's backbone: a ResNet whose last stages are dilated (output stride 8 or 16).

Three sources, all offline:

- ``resnet50`` / ``resnet101``: torchvision's ResNets, initialised from a local torchvision ImageNet
  checkpoint (read with safetensors or ``torch.load(weights_only=True)``), or randomly when the weights
  are explicitly ``none``. torchvision's ``replace_stride_with_dilation`` makes the dilated stages.
- ``resnet50-v1c`` / ``resnet101-v1c``: mmseg's ResNetV1c (MaskCLIP+'s backbone): the same trunk with a
  deep stem (three 3x3 convolutions, 32-32-64 wide, instead of one 7x7), read from mmseg's
  ``resnet101_v1c`` checkpoint (keys ``stem.N.*``, ``layerN.*``). Its dilated stages equal torchvision's
  (mmseg's ``contract_dilation``: the first block of a dilated stage keeps the previous rate).
- ``clip``: a trainable copy of the frozen CLIP's own ResNet trunk (stem and four stages of open_clip's
  ``ModifiedResNet``), always at hand. Its stages downsample with an average pool after the 3x3
  convolution; the dilated stages drop those pools and dilate their 3x3 convolutions instead, as
  torchvision does (the first block of a stage keeps the previous dilation).

Every backbone returns the stride-4 features of the first stage (DeepLabv3+'s decoder uses them) and
the last stage's features.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, cast

import torch
import torchvision
from open_clip.modified_resnet import ModifiedResNet
from torch import nn

from .files import read_state_dict

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "WEIGHT_FILES", "Backbone", "build_backbone", "freeze_batchnorm",
           "frozen_batchnorms"]

#: ImageNet's mean and std (pixels in [0, 1]): the normalisation torchvision's and mmseg's ResNets were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: The ImageNet checkpoints each backbone loads (downloaded by hand and passed as a local file).
WEIGHT_FILES = {
    "resnet101": "torchvision's resnet101-63fe2227.pth (or resnet101-cd907fc2.pth)",
    "resnet50": "torchvision's resnet50-0676ba61.pth (or resnet50-11ad3fa6.pth)",
    "resnet101-v1c": "mmseg's resnet101_v1c-e67eebb6.pth (open-mmlab://resnet101_v1c, MaskCLIP+'s)",
    "resnet50-v1c": "mmseg's resnet50_v1c-2cccc1ad.pth (open-mmlab://resnet50_v1c)",
}


class Backbone(nn.Module):
    """A ResNet trunk: images (B, 3, H, W) -> (low, high) features.

    Args:
        stem: the stride-4 stem (convolutions and pooling).
        stages: the four residual stages.
        channels: (low, high) feature widths (the first and the last stage's outputs).
        output_stride: pixels per cell of the last stage's features (8, 16 or 32).
    """

    def __init__(self, stem: nn.Module, stages: nn.ModuleList, channels: tuple[int, int], output_stride: int) -> None:
        super().__init__()
        self.stem, self.stages = stem, stages
        self.channels, self.output_stride = channels, output_stride

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> low (B, C1, H/4, W/4) and high (B, C4, H/s, W/s) features, s the output stride."""
        x = self.stem(images)
        low = x = self.stages[0](x)
        for stage in self.stages[1:]:
            x = stage(x)
        return low, x


def _dilations(output_stride: int) -> tuple[bool, bool, bool]:
    """Which of stages 2-4 trade their stride for dilation (torchvision's replace_stride_with_dilation)."""
    table = {8: (False, True, True), 16: (False, False, True), 32: (False, False, False)}
    if output_stride not in table:
        raise ValueError(f"output_stride must be 8, 16 or 32, not {output_stride}")
    return table[output_stride]


def _read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors file or a ``torch.save`` file (:func:`mvpseg.files.read_state_dict`)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"backbone weights file not found: {path}")
    return read_state_dict(path)


def _deep_stem() -> nn.Sequential:
    """ResNetV1c's stem: three 3x3 conv-BN-ReLU (3 -> 32 stride 2, 32 -> 32, 32 -> 64), then the 3x3 max pool.

    The indices are mmseg's (``stem.0`` conv, ``stem.1`` BN, ... ``stem.7`` BN), so its checkpoint loads as is.
    """
    layers: list[nn.Module] = []
    for index, (cin, cout) in enumerate(((3, 32), (32, 32), (32, 64))):
        layers += [nn.Conv2d(cin, cout, 3, stride=2 if index == 0 else 1, padding=1, bias=False),
                   nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.MaxPool2d(kernel_size=3, stride=2, padding=1))


def _torchvision_backbone(name: str, output_stride: int, weights: str | None) -> Backbone:
    depth, deep_stem = int(name.removeprefix("resnet").removesuffix("-v1c")), name.endswith("-v1c")
    builder = {50: torchvision.models.resnet50, 101: torchvision.models.resnet101}[depth]
    net = builder(weights=None, replace_stride_with_dilation=list(_dilations(output_stride)))
    stem = _deep_stem() if deep_stem else nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    stages = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])
    backbone = Backbone(stem, stages, (256, 2048), output_stride)
    if weights is not None:
        state = _read_weights(weights)
        if deep_stem:  # mmseg's names: stem.N.*, layerN.*; a "backbone." prefix when saved from a whole model
            state = {key.removeprefix("backbone."): value for key, value in state.items()}
            state = {(f"stages.{int(key[5]) - 1}{key[6:]}" if key.startswith("layer") else key): value
                     for key, value in state.items() if not key.startswith("fc.")}
        else:  # torchvision's names: conv1, bn1, layerN.*, fc
            renamed = {"conv1.": "stem.0.", "bn1.": "stem.1."}
            state = {next((new + key[len(old):] for old, new in renamed.items() if key.startswith(old)),
                          f"stages.{int(key[5]) - 1}{key[6:]}" if key.startswith("layer") else key): value
                     for key, value in state.items() if not key.startswith("fc.")}
        try:
            missing, unexpected = backbone.load_state_dict(state, strict=False)
        except RuntimeError as error:  # a tensor of another shape
            missing, unexpected = [str(error).splitlines()[-1].strip()], []
        if missing or unexpected:
            raise ValueError(
                f"{weights} does not fit the {name} backbone (missing: {', '.join(missing[:5]) or '-'}; "
                f"unexpected: {', '.join(unexpected[:5]) or '-'}): it loads {WEIGHT_FILES[name]}"
            )
    return backbone


def _dilate_clip_stage(stage: nn.Sequential, dilation: int, previous: int) -> None:
    """Make an open_clip ResNet stage keep its input resolution: drop the stride pools, dilate the 3x3 convs."""
    block: Any  # open_clip's Bottleneck: untyped, its parts are attributes set at run time
    for index, block in enumerate(stage):
        rate = previous if index == 0 else dilation
        block.conv2.dilation, block.conv2.padding = (rate, rate), (rate, rate)
        block.avgpool = nn.Identity()
        if block.downsample is not None:
            block.downsample[0] = nn.Identity()  # the pool before the 1x1 projection (open_clip names it "-1")


def _clip_backbone(visual: nn.Module, output_stride: int) -> Backbone:
    if not isinstance(visual, ModifiedResNet):
        raise ValueError(
            f"the 'clip' backbone needs a ResNet CLIP (RN50, RN101, mvpseg-tiny, ...), not a {type(visual).__name__}: "
            f"use --backbone resnet101"
        )
    trunk = copy.deepcopy(visual).train().requires_grad_(True)
    stem = nn.Sequential(trunk.conv1, trunk.bn1, trunk.act1, trunk.conv2, trunk.bn2, trunk.act2, trunk.conv3,
                         trunk.bn3, trunk.act3, trunk.avgpool)
    stages = nn.ModuleList([trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4])
    previous = 1
    for stage, dilated in zip(stages[1:], _dilations(output_stride)):
        if dilated:
            rate = previous * 2
            _dilate_clip_stage(cast(nn.Sequential, stage), rate, previous)  # open_clip's layer2-4
            previous = rate
    width = trunk.layer1[0].conv1.in_channels  # the trunk's base width
    return Backbone(stem, stages, (width * 4, width * 32), output_stride)


def build_backbone(name: str, output_stride: int, weights: str | None = None,
                   clip_visual: nn.Module | None = None) -> Backbone:
    """Build the student's backbone.

    Args:
        name: "resnet50", "resnet101" (torchvision), "resnet50-v1c", "resnet101-v1c" (mmseg's deep stem) or
            "clip" (a copy of the CLIP's ResNet trunk).
        output_stride: 8 or 16 (32: no dilation).
        weights: an ImageNet checkpoint file for the ResNets; None: random initialisation (an explicit choice);
            "" (not chosen): refused, the message names the file to download.
        clip_visual: the CLIP's image tower (needed by "clip").

    Raises:
        ValueError: an unknown name, weights missing or not fitting, or "clip" with a ViT CLIP.
    """
    if name in WEIGHT_FILES:
        if weights == "":
            raise ValueError(
                f"the {name} backbone needs its ImageNet weights: download {WEIGHT_FILES[name]} and pass it as a "
                f"local file with --backbone-weights FILE (or use --backbone clip, or --backbone-weights none for "
                f"a random start: a different experiment)"
            )
        return _torchvision_backbone(name, output_stride, weights)
    if name == "clip":
        if weights:
            raise ValueError("--backbone-weights is for the resnet backbones; the 'clip' backbone starts from CLIP's weights")
        if clip_visual is None:
            raise ValueError("the 'clip' backbone needs the CLIP's image tower")
        return _clip_backbone(clip_visual, output_stride)
    raise ValueError(f"unknown backbone {name!r}: use {', '.join(WEIGHT_FILES)} or clip")


def frozen_batchnorms(module: nn.Module) -> list[nn.Module]:
    """Every BatchNorm of ``module`` (plain or synchronised)."""
    return [norm for norm in module.modules() if isinstance(norm, nn.modules.batchnorm._BatchNorm)]


def freeze_batchnorm(module: nn.Module) -> None:
    """Fix every BatchNorm of ``module``: statistics not updated, affine parameters not trained.

    Small per-process batches give poor batch statistics; the pretrained ones are kept. The parameters
    are frozen at once (so that an optimiser built afterwards leaves them out); the statistics stay
    fixed as long as the norms are in eval mode: call after each ``module.train()`` (the student's
    ``train`` does).
    """
    for norm in frozen_batchnorms(module):
        norm.eval()
        for parameter in norm.parameters():
            parameter.requires_grad_(False)
