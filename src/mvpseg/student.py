"""MVP-SEG+'s student: a DeepLab whose classifier stays open-vocabulary.

The student maps an image to dense features in CLIP's joint space, ``F_s = decoder(backbone(x))``
(B, D, h, w), at stride 8 (DeepLabv2) or 4 (DeepLabv3+'s decoder), and scores them against the text
embeddings of the learned prompts (K + 1, C, D), fused over the K segmentation prompts
(:class:`mvpseg.MVPHead`, without GPR). The prompts stay frozen inside the student, so a trained
student still segments any list of class names; a learnable embedding stands for "background" where
the dataset has that class. Parts:

- :class:`DeepLabV2Decoder`: parallel 3x3 convolutions dilated 6, 12, 18, 24 on the last stage,
  summed (DeepLabv2's ASPP; MaskCLIP+'s ``ASPPHeadV2`` when D wide without projection).
- :class:`DepthwiseSeparableASPPDecoder`: MaskCLIP+'s DeepLabv3+ head (mmseg's
  ``DepthwiseSeparableASPPHead``: rates 1, 12, 24, 36, image pooling, depthwise-separable convolutions).
- :class:`DeepLabV3PlusDecoder`: mvpseg's DeepLabv3+: torchvision's ASPP (rates 12, 24, 36 at output
  stride 8), then DeepLabv3+'s decoder with the stride-4 features of the first stage.

Two heads (``StudentConfig.head``): "maskclip" is MaskCLIP+'s (the decoder D wide, its features scored
by their product with the text embeddings, ``norm_feat=False``); "mvpseg" is ours (a 1x1 projection to
D, L2-normalised features, a learned tau1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPP

from .backbones import Backbone, freeze_batchnorm
from .clip import ClipBundle
from .config import DenseOptions, StudentConfig
from .model import ClipModel, MVPHead
from .prompts import PromptLearner, validate_class_names

__all__ = ["BACKGROUND", "DeepLabV2Decoder", "DeepLabV3PlusDecoder", "DepthwiseSeparableASPPDecoder", "Student",
           "build_decoder"]

#: The class name whose text embedding the student's learned background embedding replaces.
BACKGROUND = "background"


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int = 3, dilation: int = 1,
                  groups: int = 1) -> nn.Sequential:
    padding = dilation * (kernel // 2)
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel, padding=padding, dilation=dilation, groups=groups,
                                   bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


def _separable(in_channels: int, out_channels: int, dilation: int = 1) -> nn.Sequential:
    """mmcv's DepthwiseSeparableConvModule: a depthwise 3x3 conv-BN-ReLU, then a pointwise 1x1 conv-BN-ReLU."""
    return nn.Sequential(_conv_bn_relu(in_channels, in_channels, 3, dilation, groups=in_channels),
                         _conv_bn_relu(in_channels, out_channels, 1))


def _projection(channels: int, embed_dim: int | None) -> nn.Module:
    """mvpseg's 1x1 projection to D, or none (MaskCLIP+'s heads are D wide and score their features directly)."""
    return nn.Conv2d(channels, embed_dim, 1) if embed_dim is not None else nn.Identity()


class DeepLabV2Decoder(nn.Module):
    """DeepLabv2's ASPP: ``sum_r relu(bn(conv3x3_r(high)))`` over dilation rates r, then a 1x1 projection to D
    (mvpseg's head) or none (MaskCLIP+'s ``ASPPHeadV2``: the branches are D wide).

    Args:
        in_channels: the last stage's width.
        channels: the width of each branch.
        embed_dim: D for a projection, or None.
        rates: the dilation rates (6, 12, 18, 24 at output stride 8).
    """

    def __init__(self, in_channels: int, channels: int, embed_dim: int | None, rates: Sequence[int]) -> None:
        super().__init__()
        self.branches = nn.ModuleList([_conv_bn_relu(in_channels, channels, kernel=1 if rate == 1 else 3,
                                                     dilation=rate) for rate in rates])
        self.projection = _projection(channels, embed_dim)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        """(B, C4, h, w) last-stage features -> (B, D, h, w)."""
        return self.projection(sum(branch(high) for branch in self.branches))


class DeepLabV3PlusDecoder(nn.Module):
    """mvpseg's DeepLabv3+: torchvision's ASPP on the last stage (regular convolutions, ``Dropout(0.5)``),
    upsampled to stride 4 and joined with the first stage's features, then a 1x1 projection to D.

    Args:
        channels: (low, high) widths of the first and last stages.
        width: the ASPP's and the decoder's width (256 in DeepLabv3+).
        embed_dim: D.
        rates: the ASPP's dilation rates (12, 24, 36 at output stride 8).
    """

    def __init__(self, channels: tuple[int, int], width: int, embed_dim: int, rates: Sequence[int]) -> None:
        super().__init__()
        self.aspp = ASPP(channels[1], list(rates), out_channels=width)
        self.reduce = _conv_bn_relu(channels[0], 48, kernel=1)
        self.fuse = nn.Sequential(_conv_bn_relu(width + 48, width), _conv_bn_relu(width, width))
        self.projection = nn.Conv2d(width, embed_dim, 1)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        """low (B, C1, H/4, W/4), high (B, C4, H/s, W/s) -> (B, D, H/4, W/4)."""
        context = F.interpolate(self.aspp(high), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.projection(self.fuse(torch.cat([context, self.reduce(low)], dim=1)))


class DepthwiseSeparableASPPDecoder(nn.Module):
    """MaskCLIP+'s DeepLabv3+ head (mmseg's ``DepthwiseSeparableASPPHead``, no dropout).

    ASPP on the last stage: image pooling (global average, 1x1 conv-BN-ReLU, broadcast back), a 1x1 branch
    for rate 1 and depthwise-separable 3x3 branches for the others, concatenated and fused by a 3x3
    conv-BN-ReLU; upsampled to stride 4, joined with the first stage reduced to 48 channels, and refined
    by two depthwise-separable 3x3 convolutions. ``width`` is D in MaskCLIP+ (its features are scored
    directly); with ``embed_dim`` a 1x1 projection to D follows.

    Args:
        channels: (low, high) widths of the first and last stages.
        width: the head's width.
        embed_dim: D for a projection, or None.
        rates: the dilation rates (1, 12, 24, 36 at output stride 8).
    """

    def __init__(self, channels: tuple[int, int], width: int, embed_dim: int | None, rates: Sequence[int]) -> None:
        super().__init__()
        low, high = channels
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), _conv_bn_relu(high, width, kernel=1))
        self.branches = nn.ModuleList([_conv_bn_relu(high, width, kernel=1) if rate == 1 else
                                       _separable(high, width, rate) for rate in rates])
        self.bottleneck = _conv_bn_relu(width * (len(rates) + 1), width)
        self.reduce = _conv_bn_relu(low, 48, kernel=1)
        self.fuse = nn.Sequential(_separable(width + 48, width), _separable(width, width))
        self.projection = _projection(width, embed_dim)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        """low (B, C1, H/4, W/4), high (B, C4, H/s, W/s) -> (B, width or D, H/4, W/4)."""
        pooled = self.pool(high).expand(-1, -1, *high.shape[-2:])  # (B, width, 1, 1) -> (B, width, h, w)
        context = self.bottleneck(torch.cat([pooled, *(branch(high) for branch in self.branches)], dim=1))
        context = F.interpolate(context, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.projection(self.fuse(torch.cat([context, self.reduce(low)], dim=1)))


def _rates(rates: Sequence[int], output_stride: int) -> list[int]:
    """Dilation rates given at output stride 8, scaled to ``output_stride`` (a rate of 1 stays 1)."""
    return [rate if rate == 1 else max(rate * 8 // output_stride, 1) for rate in rates]


def build_decoder(arch: str, head: str, channels: tuple[int, int], width: int, embed_dim: int,
                  output_stride: int) -> nn.Module:
    """The student's decoder for ``arch`` ("deeplabv2" or "deeplabv3plus") and ``head`` ("maskclip": MaskCLIP+'s
    ASPPHeadV2 / DepthwiseSeparableASPPHead, ``width`` = D and no projection; "mvpseg": ours, ``width`` wide then
    projected to D), its rates scaled to the output stride."""
    if head not in ("maskclip", "mvpseg"):
        raise ValueError(f"unknown student head {head!r}: use maskclip or mvpseg")
    projection = embed_dim if head == "mvpseg" else None
    if head == "maskclip" and width != embed_dim:
        raise ValueError(f"MaskCLIP+'s head is D = {embed_dim} wide (its features are scored directly), not {width}: "
                         f"leave --head-channels unset or use --head mvpseg")
    if arch == "deeplabv2":
        return DeepLabV2Decoder(channels[1], width, projection, _rates((6, 12, 18, 24), output_stride))
    if arch == "deeplabv3plus" and head == "maskclip":
        return DepthwiseSeparableASPPDecoder(channels, width, None, _rates((1, 12, 24, 36), output_stride))
    if arch == "deeplabv3plus":
        return DeepLabV3PlusDecoder(channels, width, embed_dim, _rates((12, 24, 36), output_stride))
    raise ValueError(f"unknown student architecture {arch!r}: use deeplabv2 or deeplabv3plus")


class Student(ClipModel):
    """MVP-SEG+'s student: a DeepLab scored against the frozen prompts' text embeddings.

    The top model receives built parts; :func:`mvpseg.build.build_student` knows the sizes.

    Args:
        clip: the frozen CLIP whose text tower encodes the prompts.
        prompts: the teacher's prompts, frozen (saved with the student, so that it answers any class names).
        backbone: the ResNet trunk.
        decoder: DeepLabv2 or DeepLabv3+ decoder ending in a projection to D.
        head: fusion over the K segmentation prompts, without GPR: a learned tau1 (mvpseg's head) or a fixed
            1 / K (MaskCLIP+'s: the product with the prompts' mean embedding).
        config: the configuration the parts were built from.
        background: a learned (D,) embedding for the class named :data:`BACKGROUND`, or None.
        normalisation: the (mean, std) of pixels in [0, 1] that the backbone was trained with (ImageNet's for
            the ResNets), or None for CLIP's own (the "clip" backbone). Callers feed CLIP-normalised images,
            as to every model of mvpseg; the student renormalises them for its backbone.
    """

    input_scale: torch.Tensor  # buffers (register_buffer), declared for the checker
    input_shift: torch.Tensor

    def __init__(self, clip: ClipBundle, prompts: PromptLearner, backbone: Backbone, decoder: nn.Module,
                 head: MVPHead, config: StudentConfig, background: nn.Parameter | None = None,
                 normalisation: tuple[Sequence[float], Sequence[float]] | None = None) -> None:
        super().__init__(clip)
        self.prompts = prompts.requires_grad_(False)
        self.backbone, self.decoder, self.head, self.config = backbone, decoder, head, config
        self.background = background
        self._text_cache: dict[tuple[str, ...], torch.Tensor] = {}
        # x_backbone = (x_clip * std_clip + mean_clip - mean) / std = x_clip * scale + shift, per channel.
        clip_mean, clip_std = torch.tensor(clip.mean), torch.tensor(clip.std)
        mean, std = (clip_mean, clip_std) if normalisation is None else map(torch.tensor, normalisation)
        self.pixel_mean: tuple[float, ...] = tuple(mean.tolist())  # the backbone's mean colour (pixels in [0, 1])
        self.register_buffer("input_scale", (clip_std / std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_shift", ((clip_mean - mean) / std).view(1, 3, 1, 1), persistent=False)
        for part in self.frozen_parts():
            freeze_batchnorm(part)

    @property
    def feature_stride(self) -> int:
        """Pixels per cell of the student's maps: the backbone's output stride, 4 with a DeepLabv3+ decoder."""
        stride_4 = (DeepLabV3PlusDecoder, DepthwiseSeparableASPPDecoder)
        return 4 if isinstance(self.decoder, stride_4) else self.backbone.output_stride

    def frozen_parts(self) -> list[nn.Module]:
        """The parts whose BatchNorms stay fixed (``config.freeze_bn``: none, the backbone's, or all)."""
        parts: dict[str, list[nn.Module]] = {"none": [], "backbone": [self.backbone], "all": [self.backbone, self.decoder]}
        return parts[self.config.freeze_bn]

    def train(self, mode: bool = True) -> Student:
        super().train(mode)
        for part in self.frozen_parts():
            freeze_batchnorm(part)
        self.prompts.eval()
        return self

    def inference_tower(self, fold: bool = True, channels_last: bool = True) -> None:
        """No separate image tower: the student's own network makes its features."""
        return None

    def features(self, images: torch.Tensor, tower: nn.Module | None = None,
                 options: DenseOptions | None = None) -> torch.Tensor:
        """(B, D, h, w) features of CLIP-normalised images (B, 3, H, W): L2-normalised with mvpseg's head, as they
        come with MaskCLIP+'s (``norm_feat=False``); ``tower`` and ``options`` (a ViT mode's) are unused."""
        low, high = self.backbone(images * self.input_scale.to(images.dtype) + self.input_shift.to(images.dtype))
        features = self.decoder(low, high).float()
        return F.normalize(features, dim=1) if self.config.head == "mvpseg" else features

    def text_embeddings(self, class_names: Sequence[str]) -> torch.Tensor:
        """(K + 1, C, D) the prompts' class embeddings, the learned background in place of "background".

        The prompts are frozen, so their embeddings are computed once per vocabulary and cached; the
        background row follows the learned embedding at every call.
        """
        names = tuple(validate_class_names(class_names))
        if names not in self._text_cache:
            with torch.inference_mode(False), torch.no_grad():  # a plain tensor even under inference mode
                self._text_cache[names] = self.prompts(names).float()
        text = self._text_cache[names]
        if self.background is None or BACKGROUND not in names:
            return text
        row = names.index(BACKGROUND)
        background = F.normalize(self.background.float(), dim=0).to(text.device)  # (D,)
        replaced = background.view(1, 1, -1).expand(text.shape[0], 1, -1)  # (K + 1, 1, D)
        return torch.cat([text[:, :row], replaced, text[:, row + 1 :]], dim=1)
