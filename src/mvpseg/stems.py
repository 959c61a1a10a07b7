"""Convolutional stems for ViT image towers: the patch embedding of a hybrid ViT made of a ResNet's first stages.

A hybrid ViT (the ViT paper's "R50+ViT-B/16") feeds its transformer the feature map of a few convolutional
stages instead of a linear projection of raw patches. The project's hybrid tiny CLIP, ``mvpseg-tiny-parts-hvit``,
is one: its stem is the first three stages of the ResNet tiny CLIP ``mvpseg-tiny-parts`` (stride 16) followed by
a 1x1 projection to the transformer's width. Everything after the stem is open_clip's ``VisionTransformer``
unchanged, so every dense mode runs on it as on any ViT. The stem exists because a linear 16-px patch embedding,
trained from scratch on this machine's budget, never learned the world's textures (src/mvpseg/world/NOTES.md).

open_clip builds the tower (its model config cannot name a stem); :func:`attach_stem` then swaps the tower's
``conv1`` for the stem the name is declared with in :data:`STEMS`. The tower keeps its ``patch_size``: the stem's
stride, which :func:`attach_stem` checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from open_clip.modified_resnet import ModifiedResNet
from torch import nn

__all__ = ["ResNetStemConfig", "ResNetStem", "STEMS", "attach_stem", "stem_config"]


@dataclass(frozen=True)
class ResNetStemConfig:
    """The ResNet stages a hybrid ViT's stem is made of (open_clip's ``ModifiedResNet`` pieces)."""

    width: int = 16  # the ResNet's base width: its stem ends at this many channels, stage s at width * 4 * 2**s
    layers: tuple[int, ...] = (1, 1, 1)  # bottleneck blocks per stage; three stages give stride 16

    @property
    def stride(self) -> int:
        """Pixels per output cell: 4 from the ResNet's own stem, 2 for every stage after the first."""
        return 4 * 2 ** (len(self.layers) - 1)

    @property
    def channels(self) -> int:
        """Channels of the last stage's output."""
        return self.width * 4 * 2 ** (len(self.layers) - 1)


#: Project CLIP name -> the stem its image tower is built with (names not here keep the linear patch embedding).
STEMS: dict[str, ResNetStemConfig] = {"mvpseg-tiny-parts-hvit": ResNetStemConfig(width=16, layers=(1, 1, 1))}


class ResNetStem(nn.Module):
    """A ResNet's stem and first stages, then a 1x1 projection: (B, 3, H, W) -> (B, out_width, H/s, W/s).

    ``trunk`` is an open_clip ``ModifiedResNet`` without its later stages and attention pool, so its weights'
    names are the ResNet CLIP's own (``visual.conv1`` there is ``visual.conv1.trunk.conv1`` here).
    """

    def __init__(self, config: ResNetStemConfig, out_width: int) -> None:
        super().__init__()
        if not 1 <= len(config.layers) <= 3:
            raise ValueError(f"a ResNet stem takes 1 to 3 stages, not {len(config.layers)}")
        # the image size and heads only shape the attention pool, which is dropped
        trunk = ModifiedResNet(layers=[*config.layers, *(1,) * (4 - len(config.layers))], output_dim=out_width,
                               heads=1, image_size=32, width=config.width)
        for name in ("attnpool", "layer4", "layer3", "layer2")[: 5 - len(config.layers)]:
            delattr(trunk, name)
        self.config = config
        self.trunk = trunk
        self.proj = nn.Conv2d(config.channels, out_width, kernel_size=1, bias=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.trunk.stem(images)  # (B, width, H/4, W/4)
        for index in range(1, len(self.config.layers) + 1):
            x = getattr(self.trunk, f"layer{index}")(x)
        return self.proj(x)  # (B, out_width, H/s, W/s)


def stem_config(name: str) -> ResNetStemConfig | None:
    """The stem a CLIP name is declared with, or None for a linear patch embedding."""
    return STEMS.get(name)


def attach_stem(model: nn.Module, name: str) -> nn.Module:
    """Give ``model`` (an open_clip CLIP) the stem :data:`STEMS` declares for ``name``; any other name: unchanged.

    The stem replaces ``model.visual.conv1`` in place; the tower's width and patch size stay. A ValueError
    when the stem's stride is not the tower's patch size.
    """
    config = stem_config(name)
    if config is None:
        return model
    visual: Any = model.visual  # open_clip's VisionTransformer: untyped, its parts are attributes set at run time
    patch = int(visual.patch_size[0])
    if config.stride != patch:
        raise ValueError(f"the stem of {name!r} has stride {config.stride} but its tower's patch size is {patch}")
    visual.conv1 = ResNetStem(config, int(visual.conv1.out_channels))
    return model
