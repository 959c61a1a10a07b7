"""Open-vocabulary inference: any image, any list of class names.

Layers, top to bottom: :meth:`Segmenter.predict` (paths, PIL or NumPy in, NumPy out), then
:meth:`Segmenter.predict_torch` (a normalised tensor in, log-scores at feature resolution out),
then :class:`mvpseg.MVPSeg` itself.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import build_mvpseg, load_mvpseg, read_prompt_checkpoint
from .clip import ClipBundle, load_clip
from .dense import feature_stride
from .image import ImageInput, load_image
from .model import MVPSeg, MVPSegOutput
from .prompts import validate_class_names

__all__ = ["InferenceConfig", "Prediction", "Segmenter", "sliding_windows"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class InferenceConfig:
    """How images are fed to the model."""

    short_side: int | None = 512  # resize so the short side has this length; None keeps the size
    mode: str = "slide"  # "slide": overlapping crop windows (ZegCLIP); "whole": the whole image at once (MaskCLIP)
    crop_size: int = 512  # sliding-window side (rounded down to a multiple of the feature stride)
    stride: int = 426  # sliding-window step (rounded to a multiple of the feature stride)
    batch_size: int = 4  # windows per forward pass
    precision: str = "auto"  # auto: fp16 autocast on CUDA, fp32 on the CPU; or fp32, bf16, fp16
    upsample_rows: int = 256  # output rows upsampled at once (bounds memory on huge images)

    def __post_init__(self) -> None:
        if self.mode not in ("slide", "whole"):
            raise ValueError(f"mode must be 'slide' or 'whole', not {self.mode!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.short_side is not None and self.short_side < 1:
            raise ValueError("short_side must be positive")
        if self.crop_size < 1 or self.stride < 1 or self.batch_size < 1:
            raise ValueError("crop_size, stride and batch_size must be positive")


@dataclass
class Prediction:
    """A segmentation of one image.

    Attributes:
        labels: (H, W) int32 class indices into ``class_names``, at the input's own resolution.
        class_names: the vocabulary, background names first when one was given.
        scores: (C, H, W) float32 final map ``softmax_c(fused) * g`` in [0, 1], when requested.
        presence: (C,) GPR's image-level class scores, or None without GPR.
    """

    labels: np.ndarray
    class_names: list[str]
    scores: np.ndarray | None = None
    presence: np.ndarray | None = None

    def class_shares(self) -> dict[str, float]:
        """Fraction of the image's pixels given to each class (classes never predicted get 0)."""
        counts = np.bincount(self.labels.ravel(), minlength=len(self.class_names))
        total = max(int(self.labels.size), 1)
        return {name: float(count) / total for name, count in zip(self.class_names, counts.tolist())}


def sliding_windows(height: int, width: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """Window boxes (y0, y1, x0, x1) covering an image, as mmsegmentation's slide inference does.

    The last window in each direction is shifted back to end at the border; an image smaller than
    the crop gives one window of its own size.
    """
    rows = max(height - crop + stride - 1, 0) // stride + 1
    cols = max(width - crop + stride - 1, 0) // stride + 1
    boxes = []
    for row in range(rows):
        for col in range(cols):
            y1, x1 = min(row * stride + crop, height), min(col * stride + crop, width)
            boxes.append((max(y1 - crop, 0), y1, max(x1 - crop, 0), x1))
    return boxes


class Segmenter:
    """MVP-SEG (or the MaskCLIP template baseline) ready to segment images.

    Args:
        model: an :class:`MVPSeg`.
        clip: the :class:`ClipBundle` the model was built on (for normalisation constants).
        config: how images are resized and windowed.
        device: where to run; default CUDA when available.
    """

    def __init__(self, model: MVPSeg, clip: ClipBundle, config: InferenceConfig | None = None,
                 device: str | torch.device | None = None) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.clip = clip
        clip.model.to(self.device)
        self.model = model.to(self.device).eval()
        self.config = config or InferenceConfig()
        self.stride = feature_stride(clip.model.visual)
        self._mean = torch.tensor(clip.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(clip.std, device=self.device).view(1, 3, 1, 1)
        self._text_cache: dict[tuple[str, ...], torch.Tensor] = {}

    @classmethod
    def from_pretrained(
        cls,
        clip: str | None = None,
        pretrained: str | os.PathLike[str] | None = "openai",
        prompts: str | os.PathLike[str] | None = None,
        device: str | torch.device | None = None,
        config: InferenceConfig | None = None,
    ) -> Segmenter:
        """Load CLIP and, optionally, learned prompts.

        Args:
            clip: open_clip architecture; default the checkpoint's, else "RN50".
            pretrained: open_clip tag, local weights file, or None for random weights.
            prompts: a prompt checkpoint; None uses MaskCLIP's 85 templates.
            device: where to run; default CUDA when available.
            config: inference options.

        Returns:
            A ready :class:`Segmenter`.
        """
        if clip is None:
            clip = read_prompt_checkpoint(prompts)[1]["config"]["clip_name"] if prompts is not None else "RN50"
        target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        bundle = load_clip(clip, pretrained, device=target)
        model = load_mvpseg(prompts, bundle) if prompts is not None else build_mvpseg(bundle, None)
        return cls(model, bundle, config=config, device=target)

    def _autocast(self) -> contextlib.AbstractContextManager:
        precision = self.config.precision
        if precision == "auto":
            precision = "fp16" if self.device.type == "cuda" else "fp32"
        if precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def text_embeddings(self, class_names: Sequence[str]) -> torch.Tensor:
        """(P, C, D) class embeddings, computed once per vocabulary and cached."""
        names = tuple(validate_class_names(class_names))
        if names not in self._text_cache:
            with torch.inference_mode(), self._autocast():
                self._text_cache[names] = self.model.text_embeddings(names).float()
        return self._text_cache[names]

    def _windows(self, height: int, width: int) -> Iterator[tuple[int, int, int, int]]:
        step = self.stride
        if self.config.mode == "whole":
            yield 0, height, 0, width
            return
        crop = max(self.config.crop_size // step, 1) * step
        stride = max(round(self.config.stride / step), 1) * step
        yield from sliding_windows(height, width, crop, stride)

    def predict_torch(self, images: torch.Tensor, class_names: Sequence[str]) -> MVPSegOutput:
        """Segment already resized, normalised images.

        Args:
            images: (B, 3, H, W) float, normalised with CLIP's mean and std, on any device.
            class_names: C class names.

        Returns:
            :class:`MVPSegOutput` over the feature grid (ceil(H / s), ceil(W / s)), s the feature stride;
            windows are stitched on that grid.
        """
        text = self.text_embeddings(class_names)
        images = images.to(self.device)
        batch, _, height, width = images.shape
        step = self.stride
        padded_h, padded_w = math.ceil(height / step) * step, math.ceil(width / step) * step
        # Pad with zeros (the mean colour after normalisation) so windows sit on whole feature cells.
        images = F.pad(images, (0, padded_w - width, 0, padded_h - height))
        canvas = torch.zeros(batch, text.shape[0], text.shape[1], padded_h // step, padded_w // step,
                             device=self.device)  # (B, P, C, h, w)
        counts = torch.zeros(1, 1, 1, padded_h // step, padded_w // step, device=self.device)
        boxes = list(self._windows(padded_h, padded_w))
        with torch.inference_mode(), self._autocast():
            for start in range(0, len(boxes), self.config.batch_size):
                chunk = boxes[start : start + self.config.batch_size]
                same_size = len({(y1 - y0, x1 - x0) for y0, y1, x0, x1 in chunk}) == 1
                groups = [chunk] if same_size else [[box] for box in chunk]
                for group in groups:
                    crops = torch.cat([images[:, :, y0:y1, x0:x1] for y0, y1, x0, x1 in group])  # (G*B, 3, h', w')
                    maps = self.model.cosine_maps(self.model.features(crops), text).float()  # (G*B, P, C, h', w')
                    for index, (y0, y1, x0, x1) in enumerate(group):
                        window = maps[index * batch : (index + 1) * batch]
                        canvas[..., y0 // step : y1 // step, x0 // step : x1 // step] += window
                        counts[..., y0 // step : y1 // step, x0 // step : x1 // step] += 1
            canvas = canvas / counts
            return self.model.head(canvas)

    def _resize(self, array: np.ndarray) -> torch.Tensor:
        image = torch.from_numpy(array).to(self.device).permute(2, 0, 1)[None].float() / 255.0  # HWC -> (1, 3, H, W)
        height, width = array.shape[:2]
        short_side = self.config.short_side
        if short_side is not None and min(height, width) != short_side:
            scale = short_side / min(height, width)
            size = (max(round(height * scale), 1), max(round(width * scale), 1))
            image = F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)
        return (image - self._mean) / self._std

    def _upsample(self, output: MVPSegOutput, resized: tuple[int, int], size: tuple[int, int],
                  with_scores: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Labels (H, W) and optionally scores (C, H, W) at the input's size, a block of rows at a time."""
        log_scores = output.final_logits()[0]  # (C, h, w) over cells of `stride` resized pixels
        num_classes, cells_h, cells_w = log_scores.shape
        height, width = size
        # Output pixel centre -> position on the cell grid, normalised to [-1, 1] (align_corners=False).
        ys = ((torch.arange(height, device=self.device) + 0.5) * (resized[0] / height) / self.stride) / cells_h * 2 - 1
        xs = ((torch.arange(width, device=self.device) + 0.5) * (resized[1] / width) / self.stride) / cells_w * 2 - 1
        labels = torch.empty(height, width, dtype=torch.int32, device=self.device)
        scores = torch.empty(num_classes, height, width, device=self.device) if with_scores else None
        for top in range(0, height, self.config.upsample_rows):
            rows = ys[top : top + self.config.upsample_rows]
            grid = torch.stack(torch.meshgrid(rows, xs, indexing="ij")[::-1], dim=-1)[None]  # (1, r, W, 2) as (x, y)
            block = F.grid_sample(log_scores[None], grid, mode="bilinear", padding_mode="border",
                                  align_corners=False)[0]  # (C, r, W)
            labels[top : top + len(rows)] = block.argmax(dim=0).to(torch.int32)
            if scores is not None:
                scores[:, top : top + len(rows)] = block.exp()
        return labels, scores

    def predict(self, image: ImageInput, class_names: Sequence[str], background: str | None = None,
                return_scores: bool = False) -> Prediction:
        """Segment one image against any list of class names.

        Args:
            image: a path, a PIL image, or an HWC uint8 array in [0, 255] (see :func:`mvpseg.load_image`).
            class_names: C readable class names ("cat", "grass", ...).
            background: a name for everything else (e.g. "background"); it becomes class 0.
            return_scores: also return the (C, H, W) final map.

        Returns:
            :class:`Prediction` at the image's own resolution.
        """
        names = validate_class_names(([background] if background else []) + list(class_names))
        array = load_image(image)
        resized = self._resize(array)
        output = self.predict_torch(resized, names)
        with torch.inference_mode():
            labels, scores = self._upsample(output, tuple(resized.shape[-2:]), array.shape[:2], return_scores)
        presence = output.presence[0].cpu().numpy() if output.presence is not None else None
        return Prediction(
            labels=labels.cpu().numpy(),
            class_names=names,
            scores=scores.cpu().numpy() if scores is not None else None,
            presence=presence,
        )
