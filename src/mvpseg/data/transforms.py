"""Training augmentation and evaluation resizing (mmsegmentation's standard pipelines).

Transforms are callables `(image, label, rng) -> (image, label)`: image (H, W, 3) uint8 RGB and
label (H, W) int64 in, image (3, h, w) uint8 and label int64 tensors out. All randomness comes
from the `rng` argument, so a sample is reproducible from (seed, epoch, index). No CLIP
normalisation happens here: the model normalises its input.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["EvalTransform", "TrainAugmentation", "resize_image", "resize_label"]


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize without antialiasing (as OpenCV's INTER_LINEAR, which mmseg uses).

    Args:
        image: (H, W, 3) uint8.
        size: (h, w) output size.

    Returns:
        (h, w, 3) uint8.
    """
    if image.shape[:2] == tuple(size):
        return image
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()  # HWC -> 1CHW
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()  # 1CHW -> HWC


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map.

    Args:
        label: (H, W) integer labels.
        size: (h, w) output size.

    Returns:
        (h, w) labels of the same dtype.
    """
    if label.shape == tuple(size):
        return label
    # Nearest sampling picks source index floor(dst * H / h), the same rule as OpenCV INTER_NEAREST.
    rows = np.minimum((np.arange(size[0]) * label.shape[0] / size[0]).astype(np.int64), label.shape[0] - 1)
    cols = np.minimum((np.arange(size[1]) * label.shape[1] / size[1]).astype(np.int64), label.shape[1] - 1)
    return label[rows[:, None], cols[None, :]]


def _rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) RGB in [0, 1] -> (..., 3) HSV with H in [0, 1)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(axis=-1)
    chroma = v - rgb.min(axis=-1)
    s = np.where(v > 0, chroma / np.maximum(v, 1e-12), 0.0)
    safe = np.maximum(chroma, 1e-12)
    h = np.where(v == r, (g - b) / safe, np.where(v == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    h = np.where(chroma > 0, (h / 6.0) % 1.0, 0.0)
    return np.stack([h, s, v], axis=-1)


def _hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """(..., 3) HSV with H in [0, 1) -> (..., 3) RGB in [0, 1]."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    k = (np.array([5.0, 3.0, 1.0]) + h[..., None] * 6.0) % 6.0  # (..., 3): one phase per channel
    return v[..., None] - (v * s)[..., None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


@dataclass
class TrainAugmentation:
    """mmseg's training pipeline: random rescale, crop, flip, photometric distortion, pad.

    Output: image uint8 (3, crop_size, crop_size), label int64 (crop_size, crop_size); images
    smaller than the crop are padded at the bottom/right with ``pad_value`` (image) and ignore_index (label).
    """

    crop_size: int = 512  # side of the square training crop
    scale: tuple[int, int] = (2048, 512)  # mmseg img_scale: fit long side <= max, short side <= min
    ratio_range: tuple[float, float] = (0.5, 2.0)  # random multiplier of `scale`
    cat_max_ratio: float = 0.75  # redraw the crop (10 tries) while one class covers >= this share
    flip_prob: float = 0.5  # probability of a horizontal flip
    photometric: bool = True  # brightness / contrast / saturation / hue as PhotoMetricDistortion
    ignore_index: int = 255  # label value of padding; not counted by cat_max_ratio
    pad_value: tuple[int, int, int] = (0, 0, 0)  # RGB of image padding (mmseg pads 0 after normalising: the mean colour)

    def __post_init__(self) -> None:
        if self.crop_size <= 0:
            raise ValueError(f"crop_size must be positive, got {self.crop_size}")
        if not 0 < self.ratio_range[0] <= self.ratio_range[1]:
            raise ValueError(f"ratio_range must satisfy 0 < low <= high, got {self.ratio_range}")
        if not 0.0 <= self.flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {self.flip_prob}")

    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment one sample.

        Args:
            image: (H, W, 3) uint8 RGB.
            label: (H, W) integer labels (0..C-1 or ignore_index).
            rng: the random generator (all randomness is drawn from it).

        Returns:
            image (3, crop, crop) uint8 tensor and label (crop, crop) int64 tensor.
        """
        if image.shape[:2] != label.shape:
            raise ValueError(f"image {image.shape[:2]} and label {label.shape} sizes differ")
        # 1. Random rescale (mmseg Resize, keep_ratio=True, ratio_range).
        ratio = rng.uniform(*self.ratio_range)
        long_edge, short_edge = max(self.scale) * ratio, min(self.scale) * ratio
        h, w = label.shape
        factor = min(int(long_edge) / max(h, w), int(short_edge) / min(h, w))
        size = (max(1, int(h * factor + 0.5)), max(1, int(w * factor + 0.5)))
        image, label = resize_image(image, size), resize_label(label, size)

        # 2. Random crop, redrawn while one class dominates (mmseg RandomCrop with cat_max_ratio).
        top, left = self._crop_offset(label.shape, rng)
        if self.cat_max_ratio < 1.0:
            for _ in range(10):
                crop = label[top : top + self.crop_size, left : left + self.crop_size]
                values, counts = np.unique(crop, return_counts=True)
                counts = counts[values != self.ignore_index]
                if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                    break
                top, left = self._crop_offset(label.shape, rng)
        image = image[top : top + self.crop_size, left : left + self.crop_size]
        label = label[top : top + self.crop_size, left : left + self.crop_size]

        # 3. Horizontal flip.
        if rng.random() < self.flip_prob:
            image, label = image[:, ::-1], label[:, ::-1]

        # 4. Photometric distortion.
        if self.photometric:
            image = self._photometric(image, rng)

        # 5. Pad bottom/right to the crop size.
        out_image = np.empty((self.crop_size, self.crop_size, 3), dtype=np.uint8)
        out_image[...] = np.asarray(self.pad_value, dtype=np.uint8)
        out_label = np.full((self.crop_size, self.crop_size), self.ignore_index, dtype=np.int64)
        out_image[: image.shape[0], : image.shape[1]] = image
        out_label[: label.shape[0], : label.shape[1]] = label
        return torch.from_numpy(out_image).permute(2, 0, 1).contiguous(), torch.from_numpy(
            out_label
        )  # HWC -> CHW

    def _crop_offset(self, shape: tuple[int, ...], rng: np.random.Generator) -> tuple[int, int]:
        top = int(rng.integers(0, max(shape[0] - self.crop_size, 0) + 1))
        left = int(rng.integers(0, max(shape[1] - self.crop_size, 0) + 1))
        return top, left

    @staticmethod
    def _photometric(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """mmseg PhotoMetricDistortion: each step applied with probability 1/2, values clipped."""
        x = image.astype(np.float32)
        if rng.integers(2):  # brightness
            x = np.clip(x + rng.uniform(-32, 32), 0, 255)
        contrast_first = bool(rng.integers(2))
        if contrast_first and rng.integers(2):
            x = np.clip(x * rng.uniform(0.5, 1.5), 0, 255)
        saturation = rng.uniform(0.5, 1.5) if rng.integers(2) else None
        hue_shift = int(rng.integers(-18, 18)) if rng.integers(2) else None  # OpenCV units: 2 degrees
        if saturation is not None or hue_shift is not None:
            hsv = _rgb_to_hsv(x / 255.0)
            if saturation is not None:
                hsv[..., 1] = np.clip(hsv[..., 1] * saturation, 0.0, 1.0)
            if hue_shift is not None:
                hsv[..., 0] = (hsv[..., 0] + hue_shift / 180.0) % 1.0
            x = np.clip(_hsv_to_rgb(hsv) * 255.0, 0, 255)
        if not contrast_first and rng.integers(2):
            x = np.clip(x * rng.uniform(0.5, 1.5), 0, 255)
        return x.round().astype(np.uint8)


@dataclass
class EvalTransform:
    """Evaluation resize: the image's short side to `short_side`; the label is left untouched.

    Predictions are resized back to the original label size before scoring, so labels are never
    resized for evaluation.
    """

    short_side: int | None = 512  # target short side in pixels; None keeps the original size

    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Resize one sample for evaluation.

        Args:
            image: (H, W, 3) uint8 RGB.
            label: (H, W) integer labels.
            rng: unused (evaluation is deterministic); accepted for the transform signature.

        Returns:
            image (3, h, w) uint8 tensor with min(h, w) == short_side, and the original label
            as an (H, W) int64 tensor.
        """
        if self.short_side is not None:
            h, w = image.shape[:2]
            factor = self.short_side / min(h, w)
            image = resize_image(image, (max(1, round(h * factor)), max(1, round(w * factor))))
        image_t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous()  # HWC -> CHW
        return image_t, torch.from_numpy(np.ascontiguousarray(label).astype(np.int64))
