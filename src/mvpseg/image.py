"""Reading images of any common kind into HWC uint8 RGB arrays."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["ImageInput", "ImageReadError", "load_image"]

ImageInput = str | os.PathLike | Image.Image | np.ndarray


class ImageReadError(ValueError):
    """An image that is missing, unreadable or of an unsupported kind."""


def _from_pil(image: Image.Image) -> np.ndarray:
    image = ImageOps.exif_transpose(image)  # EXIF orientation: pixels as the photo is meant to be seen
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image, dtype=np.float64)  # 16-bit (or 32-bit int) greyscale
        top = 65535.0 if values.max(initial=0) > 255 or image.mode.startswith("I;16") else 255.0
        grey = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min(initial=0)), float(values.max(initial=1))
        grey = np.clip((values - low) / max(high - low, 1e-12) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)  # transparent areas over white
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def _from_array(array: np.ndarray) -> np.ndarray:
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ImageReadError(f"an image array must be HW, HWC with 1, 3 or 4 channels; got shape {array.shape}")
    if array.dtype == np.uint16:
        array = (array.astype(np.float64) / 257.0 + 0.5).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        array = (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)  # floats are taken to be in [0, 1]
    elif array.dtype != np.uint8:
        raise ImageReadError(f"image arrays must be uint8, uint16 or float in [0, 1]; got {array.dtype}")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    elif array.shape[2] == 4:
        alpha = array[:, :, 3:4].astype(np.float64) / 255.0
        array = (array[:, :, :3] * alpha + 255.0 * (1.0 - alpha) + 0.5).astype(np.uint8)
    return np.ascontiguousarray(array)


def load_image(image: ImageInput) -> np.ndarray:
    """Read an image as RGB.

    Args:
        image: a file path, a PIL image, or an array (HWC uint8 in [0, 255]; HW greyscale, uint16
            and floats in [0, 1] are converted). RGBA is composited over white, palette and 16-bit
            images are converted, EXIF orientation is applied.

    Returns:
        (H, W, 3) uint8 RGB array.

    Raises:
        ImageReadError: a missing, unreadable or corrupt file, or an unsupported array.
    """
    if isinstance(image, np.ndarray):
        return _from_array(image)
    if isinstance(image, Image.Image):
        return _from_pil(image)
    path = Path(image)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file")
    if path.is_dir():
        raise ImageReadError(f"{path}: is a folder, not an image")
    try:
        with Image.open(path) as opened:
            opened.load()
            return _from_pil(opened)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(f"{path}: not a readable image ({type(error).__name__}: {error})") from error
