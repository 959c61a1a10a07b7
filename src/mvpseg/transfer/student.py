"""MVP-SEG+'s student: a DeepLab whose classifier stays open-vocabulary.

The student maps an image to dense features in CLIP's joint space, ``F_s = normalise(proj(decoder(
backbone(x))))`` (B, D, h, w), at stride 8 (DeepLabv2) or 4 (DeepLabv3+'s decoder), and scores them
exactly as the teacher scores CLIP's features: cosine maps against the text embeddings of the learned
prompts (K + 1, C, D), fused over the K segmentation prompts with a learned scale ``tau1``
(:class:`mvpseg.MVPHead`, without GPR). The prompts stay frozen inside the student, so a trained
student still segments any list of class names; a learnable embedding stands for "background" where
the dataset has that class. Parts:

- :class:`DeepLabV2Decoder`: parallel 3x3 convolutions dilated 6, 12, 18, 24 on the last stage,
  summed (DeepLabv2's ASPP, as MaskCLIP+'s student has it).
- :class:`DeepLabV3PlusDecoder`: torchvision's ASPP (rates 12, 24, 36 at output stride 8), then
  DeepLabv3+'s decoder with the stride-4 features of the first stage.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPP

from ..clip import ClipBundle
from ..config import StudentConfig
from ..model import MVPHead, MVPSegOutput, cosine_maps
from ..prompts import PromptLearner, validate_class_names
from .backbones import Backbone, freeze_batchnorm

__all__ = ["BACKGROUND", "DeepLabV2Decoder", "DeepLabV3PlusDecoder", "Student", "build_decoder"]

#: The class name whose text embedding the student's learned background embedding replaces.
BACKGROUND = "background"


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int = 3, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel // 2)
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel, padding=padding, dilation=dilation, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class DeepLabV2Decoder(nn.Module):
    """DeepLabv2's ASPP: ``sum_r relu(bn(conv3x3_r(high)))`` over dilation rates r, then a 1x1 projection to D.

    Args:
        in_channels: the last stage's width.
        channels: the width of each branch.
        embed_dim: D, CLIP's joint embedding size.
        rates: the dilation rates (6, 12, 18, 24 at output stride 8).
    """

    def __init__(self, in_channels: int, channels: int, embed_dim: int, rates: Sequence[int]) -> None:
        super().__init__()
        self.branches = nn.ModuleList([_conv_bn_relu(in_channels, channels, dilation=rate) for rate in rates])
        self.projection = nn.Conv2d(channels, embed_dim, 1)
        self.stride_factor = 1  # output at the backbone's stride

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        """(B, C4, h, w) last-stage features -> (B, D, h, w)."""
        return self.projection(sum(branch(high) for branch in self.branches))


class DeepLabV3PlusDecoder(nn.Module):
    """DeepLabv3+: ASPP on the last stage, upsampled to stride 4 and joined with the first stage's features.

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


def build_decoder(arch: str, channels: tuple[int, int], width: int, embed_dim: int, output_stride: int) -> nn.Module:
    """The student's decoder for ``arch`` ("deeplabv2" or "deeplabv3plus"), its rates scaled to the output stride."""
    if arch == "deeplabv2":
        return DeepLabV2Decoder(channels[1], width, embed_dim, [max(rate * 8 // output_stride, 1) for rate in (6, 12, 18, 24)])
    if arch == "deeplabv3plus":
        return DeepLabV3PlusDecoder(channels, width, embed_dim, [max(rate * 8 // output_stride, 1) for rate in (12, 24, 36)])
    raise ValueError(f"unknown student architecture {arch!r}: use deeplabv2 or deeplabv3plus")


class Student(nn.Module):
    """MVP-SEG+'s student: a DeepLab scored against the frozen prompts' text embeddings.

    The top model receives built parts; :func:`mvpseg.build.build_student` knows the sizes.

    Args:
        clip: the frozen CLIP whose text tower encodes the prompts (not registered: never trained, never saved).
        prompts: the teacher's prompts, frozen (saved with the student, so that it answers any class names).
        backbone: the ResNet trunk.
        decoder: DeepLabv2 or DeepLabv3+ decoder ending in a projection to D.
        head: fusion over the K segmentation prompts with a learned tau1, without GPR.
        config: the configuration the parts were built from.
        background: a learned (D,) embedding for the class named :data:`BACKGROUND`, or None.
    """

    def __init__(self, clip: ClipBundle, prompts: PromptLearner, backbone: Backbone, decoder: nn.Module,
                 head: MVPHead, config: StudentConfig, background: nn.Parameter | None = None) -> None:
        super().__init__()
        self._clip = [clip]
        self.prompts = prompts.requires_grad_(False)
        self.backbone, self.decoder, self.head, self.config = backbone, decoder, head, config
        self.background = background
        self._text_cache: dict[tuple[str, ...], torch.Tensor] = {}

    @property
    def clip(self) -> ClipBundle:
        return self._clip[0]

    @property
    def clip_model(self) -> nn.Module:
        return self._clip[0].model

    @property
    def stride(self) -> int:
        """Pixels per cell of the student's maps: the backbone's output stride, 4 with DeepLabv3+'s decoder."""
        return 4 if isinstance(self.decoder, DeepLabV3PlusDecoder) else self.backbone.output_stride

    def train(self, mode: bool = True) -> Student:
        super().train(mode)
        if self.config.freeze_bn:
            freeze_batchnorm(self.backbone)
        self.prompts.eval()
        return self

    def inference_tower(self, fold: bool = True, channels_last: bool = True) -> None:
        """No separate image tower: the student's own network makes its features."""
        return None

    def features(self, images: torch.Tensor, tower: nn.Module | None = None) -> torch.Tensor:
        """(B, D, h, w) L2-normalised features of normalised images (B, 3, H, W); ``tower`` is unused."""
        low, high = self.backbone(images)
        return F.normalize(self.decoder(low, high).float(), dim=1)

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

    cosine_maps = staticmethod(cosine_maps)

    def forward(self, images: torch.Tensor, class_names: Sequence[str] | None = None,
                text: torch.Tensor | None = None) -> MVPSegOutput:
        """Segment normalised images (B, 3, H, W) against a vocabulary -> :class:`MVPSegOutput` at the student's stride."""
        if text is None:
            if class_names is None:
                raise ValueError("give class_names or text embeddings")
            text = self.text_embeddings(class_names)
        return self.head(self.cosine_maps(self.features(images), text))
