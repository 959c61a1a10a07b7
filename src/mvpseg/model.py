"""MVP-SEG: per-prompt cosine maps, their fusion, and Global Prompt Refining (GPR).

Data flows one way: normalised images -> dense CLIP features (B, D, h, w) -> one cosine map per
prompt and class (B, P, C, h, w) -> fused logits ``tau1 * sum_i m_i`` (B, C, h, w) and image-level
class scores ``g`` (B, C) -> the final map ``softmax_c(fused) * g``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from .clip import ClipBundle
from .config import DenseOptions, MVPSegConfig
from .dense import Feedback, dense_features, feature_stride
from .prompts import PromptLearner, template_embeddings
from .tower import inference_tower

if TYPE_CHECKING:
    import open_clip

__all__ = ["ClipModel", "MVPSegConfig", "MVPHead", "MVPSeg", "MVPSegOutput", "SegmentationModel", "cosine_maps"]


def cosine_maps(features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Cosine maps of normalised features (B, D, h, w) against text (P, C, D) -> (B, P, C, h, w)."""
    return torch.einsum("bdhw,pcd->bpchw", features, text.to(features.dtype))


@dataclass
class MVPSegOutput:
    """What one forward pass gives, at feature resolution.

    Attributes:
        fused_logits: (B, C, h, w) ``tau1 * sum_i m_i`` over the segmentation prompts.
        presence_logits: (B, C) GPR's image-level scores before the sigmoid, or None without GPR.
        prompt_maps: (B, P, C, h, w) cosine maps; P = K + 1 with the global prompt at index 0 when
            the model has learned prompts, P = 1 for the template baseline.
    """

    fused_logits: torch.Tensor
    presence_logits: torch.Tensor | None
    prompt_maps: torch.Tensor

    @property
    def presence(self) -> torch.Tensor | None:
        """(B, C) GPR's class scores ``g`` in (0, 1), or None without GPR."""
        return None if self.presence_logits is None else torch.sigmoid(self.presence_logits)

    def final_logits(self, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Log of the final map, ``log(softmax_c(fused) * g)``, optionally resized (bilinear) first.

        Args:
            size: (H, W) to upsample the fused logits to before the softmax, or None.

        Returns:
            (B, C, H, W) log-scores; their argmax over C is the predicted label.
        """
        logits = self.fused_logits
        if size is not None and tuple(logits.shape[-2:]) != tuple(size):
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        logits = logits.float().log_softmax(dim=1)
        if self.presence_logits is not None:
            logits = logits + F.logsigmoid(self.presence_logits.float())[:, :, None, None]
        return logits


class MVPHead(nn.Module):
    """Fusion of the segmentation prompts' maps and Global Prompt Refining.

    Args:
        has_global: whether index 0 of the maps is the global prompt (False for the templates).
        use_gpr: apply GPR (needs ``has_global``).
        tau1: initial fusion scale.
        tau2: initial GPR temperature.
        gamma: GPR's spatial softmax sharpness (fixed).
        gpr_bias: learn an offset b in ``g = sigmoid((s - b) / tau2)``.
        learnable: train tau1, tau2 (and b); otherwise they stay fixed.
    """

    def __init__(
        self,
        has_global: bool,
        use_gpr: bool,
        tau1: float,
        tau2: float = 0.07,
        gamma: float = 30.0,
        gpr_bias: bool = True,
        learnable: bool = True,
    ) -> None:
        super().__init__()
        if use_gpr and not has_global:
            raise ValueError("GPR needs a global prompt")
        self.has_global, self.use_gpr, self.gamma = has_global, use_gpr, gamma
        self.log_tau1 = nn.Parameter(torch.tensor(math.log(tau1)), requires_grad=learnable)
        self.log_tau2 = nn.Parameter(torch.tensor(math.log(tau2)), requires_grad=learnable)
        self.gpr_offset = nn.Parameter(torch.zeros(()), requires_grad=learnable and gpr_bias)

    @property
    def tau1(self) -> torch.Tensor:
        return self.log_tau1.exp()

    @property
    def tau2(self) -> torch.Tensor:
        return self.log_tau2.exp()

    def presence_logits(self, global_maps: torch.Tensor) -> torch.Tensor:
        """GPR's image-level scores before the sigmoid: ``(sum_pixels softmax_pixels(gamma m0) m0 - b) / tau2``.

        Args:
            global_maps: (B, C, h, w) the global prompt's cosine maps.

        Returns:
            (B, C) logits; ``g = sigmoid(logits)``.
        """
        flat = global_maps.float().flatten(2)  # (B, C, h, w) -> (B, C, h*w)
        weights = (self.gamma * flat).softmax(dim=-1)
        pooled = (weights * flat).sum(dim=-1)  # (B, C)
        return (pooled - self.gpr_offset) / self.tau2

    def forward(self, prompt_maps: torch.Tensor) -> MVPSegOutput:
        """Combine per-prompt maps (B, P, C, h, w) into fused logits and presence scores."""
        segment_maps = prompt_maps[:, 1:] if self.has_global else prompt_maps  # (B, K, C, h, w)
        fused = self.tau1 * segment_maps.float().sum(dim=1)  # (B, C, h, w)
        presence = self.presence_logits(prompt_maps[:, 0]) if self.use_gpr else None
        return MVPSegOutput(fused_logits=fused, presence_logits=presence, prompt_maps=prompt_maps)


_Model = TypeVar("_Model", bound="SegmentationModel")


class SegmentationModel(Protocol):
    """What :class:`mvpseg.Segmenter` uses of a model, all of it: :class:`ClipModel`s (:class:`MVPSeg`, the
    students) offer it, and so does the model of an ONNX file (:mod:`mvpseg.onnx_segmenter`: windows in onnxruntime).

    Attributes:
        head: fusion (and GPR) over the stitched per-prompt maps (B, P, C, h, w).
        inference_settings: the InferenceConfig fields the model's checkpoint was made for (a Segmenter's
            defaults; empty for a model built in code).
    """

    head: MVPHead
    inference_settings: dict[str, Any]

    @property
    def clip(self) -> ClipBundle | None:
        """The frozen CLIP the model runs on (a :class:`ClipBundle`); None for an ONNX file with baked classes."""

    @property
    def clip_model(self) -> open_clip.CLIP:
        """Its open_clip ``CLIP`` module (the template classifier encodes other template sets with it)."""

    @property
    def config(self) -> Any:
        """The settings the model was built from (a dataclass), recorded in a Segmenter's identity."""

    @property
    def feature_stride(self) -> int:
        """Pixels per feature cell."""

    def normalisation(self, device: str | torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The (1, 3, 1, 1) mean and std the model's images are normalised with."""

    def inference_tower(self, fold: bool = True, channels_last: bool = True) -> nn.Module | None:
        """The image tower inference runs (``features``' ``tower``), or None."""

    def features(self, images: torch.Tensor, tower: nn.Module | None = None,
                 options: DenseOptions | None = None) -> torch.Tensor:
        """(B, D, h, w) L2-normalised dense features of normalised images (B, 3, H, W)."""

    def cosine_maps(self, features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Features (B, D, h, w) against text (P, C, D) -> (B, P, C, h, w)."""

    def text_embeddings(self, class_names: Sequence[str]) -> torch.Tensor:
        """(P, C, D) normalised class embeddings."""

    def state_dict(self) -> dict[str, Any]:
        """The trained tensors, fingerprinted in a Segmenter's identity."""

    def to(self: _Model, device: torch.device) -> _Model:
        """The model on ``device``."""

    def eval(self: _Model) -> _Model:
        """The model in inference mode."""


class ClipModel(nn.Module):
    """What every mvpseg model is (:class:`MVPSeg`, :class:`mvpseg.student.Student`): a frozen CLIP it holds,
    dense features scored by their cosine against class embeddings, and a head (:class:`MVPHead`) over those maps.

    A subclass sets ``self.head`` and defines ``features(images, tower=None)`` and ``text_embeddings(names)``.

    Args:
        clip: the frozen CLIP (its model is not registered as a submodule: never trained, never saved).
    """

    head: MVPHead

    def __init__(self, clip: ClipBundle) -> None:
        super().__init__()
        self._clip = [clip]  # a list hides the CLIP from nn.Module registration and state_dict
        #: The InferenceConfig scale fields its checkpoint was made for (:data:`mvpseg.checkpoint.INFERENCE_FIELDS`,
        #: set by the loaders; empty for a model built in code): a Segmenter's default settings.
        self.inference_settings: dict[str, Any] = {}

    @property
    def clip(self) -> ClipBundle:
        """The frozen CLIP the model runs on (name, weights' source, normalisation, tokenizer)."""
        return self._clip[0]

    @property
    def clip_model(self) -> open_clip.CLIP:
        """The open_clip ``CLIP`` module."""
        return self._clip[0].model

    def normalisation(self, device: str | torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The (1, 3, 1, 1) mean and std the model's images are normalised with: its CLIP's."""
        return self.clip.normalisation(device)

    cosine_maps = staticmethod(cosine_maps)

    if TYPE_CHECKING:  # what every subclass defines (MVPSeg, Student): declared for the checker only

        @property
        def feature_stride(self) -> int: ...

        def inference_tower(self, fold: bool = True, channels_last: bool = True) -> nn.Module | None: ...

    def features(self, images: torch.Tensor, tower: nn.Module | None = None,
                 options: DenseOptions | None = None) -> torch.Tensor:
        raise NotImplementedError

    def text_embeddings(self, class_names: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, images: torch.Tensor, class_names: Sequence[str] | None = None,
                text: torch.Tensor | None = None) -> MVPSegOutput:
        """Segment normalised images against a vocabulary.

        Args:
            images: (B, 3, H, W) float, normalised with CLIP's mean and std.
            class_names: C class names (ignored when ``text`` is given).
            text: precomputed (P, C, D) embeddings from :meth:`text_embeddings`.

        Returns:
            :class:`MVPSegOutput` at the model's stride (h, w) = (H, W) / stride.
        """
        return self.segment_features(self.features(images), class_names, text)

    def segment_features(self, features: torch.Tensor, class_names: Sequence[str] | None = None,
                         text: torch.Tensor | None = None) -> MVPSegOutput:
        """Like :meth:`forward`, from dense features (B, D, h, w) (e.g. a feature cache)."""
        if text is None:
            if class_names is None:
                raise ValueError("give class_names or text embeddings")
            text = self.text_embeddings(class_names)
        return self.head(self.cosine_maps(features, text))


class MVPSeg(ClipModel):
    """MVP-SEG on a frozen CLIP: learned multi-view prompts, or MaskCLIP's templates when ``prompts`` is None.

    The top model receives built parts; :func:`mvpseg.build_mvpseg` knows sizes.

    Args:
        clip: the frozen CLIP.
        prompts: a :class:`PromptLearner`, or None for the 85-template baseline.
        head: the fusion and GPR head.
        config: the configuration the parts were built from.
    """

    def __init__(self, clip: ClipBundle, prompts: PromptLearner | None, head: MVPHead, config: MVPSegConfig) -> None:
        super().__init__(clip)
        self.prompts = prompts
        self.head = head
        self.config = config

    @property
    def feature_stride(self) -> int:
        """Pixels per feature-map cell (32 for ResNet towers, the patch size for ViTs)."""
        return feature_stride(self.clip_model.visual)

    def text_embeddings(self, class_names: Sequence[str]) -> torch.Tensor:
        """(P, C, D) normalised class embeddings: every prompt's, or the template average (P = 1)."""
        if self.prompts is not None:
            return self.prompts(class_names)
        return template_embeddings(self.clip_model, self.clip.tokenizer, class_names).unsqueeze(0)  # (C, D) -> (1, C, D)

    def inference_tower(self, fold: bool = True, channels_last: bool = True) -> nn.Module:
        """The image tower as inference runs it (:func:`mvpseg.dense.inference_tower`): same features, faster."""
        return inference_tower(self.clip_model.visual, fold=fold, channels_last=channels_last)

    def features(self, images: torch.Tensor, tower: nn.Module | None = None,
                 options: DenseOptions | None = None, feedback: Feedback | None = None) -> torch.Tensor:
        """(B, D, h, w) L2-normalised dense features of normalised images (B, 3, H, W).

        Args:
            images: (B, 3, H, W) float, normalised with CLIP's mean and std.
            tower: the image tower to run; default CLIP's own (:class:`mvpseg.Segmenter` passes an
                :func:`mvpseg.dense.inference_tower`, which gives the same features faster).
            options: the ViT mode's parameters and positional resize (:class:`mvpseg.config.DenseOptions`,
                an ``InferenceConfig.dense``); None: the defaults. The mode itself is the model's
                (``config.vit_mode``).
            feedback: ResCLIP's semantic feedback of a vocabulary (resclip only; :mod:`mvpseg.feedback`).
        """
        visual = self.clip_model.visual if tower is None else tower
        return F.normalize(dense_features(visual, images, self.config.vit_mode, options, feedback).float(), dim=1)
