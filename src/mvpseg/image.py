"""Reading images of any common kind into HWC uint8 RGB arrays."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["ImageInput", "ImageReadError", "load_image", "resize_cv2"]

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


_RAISE_LIMIT = "if you trust this image, allow more pixels (load_image's max_pixels; mvpseg segment --max-pixels N)"


def _open_with_limit(path: Path, fp: BinaryIO, max_pixels: int) -> Image.Image:
    """Open an image file as ``Image.open`` does, but checked against ``max_pixels`` instead of Pillow's limit.

    ``Image.open`` refuses images over ``PIL.Image.MAX_IMAGE_PIXELS``, a process-wide setting that
    belongs to the host program, so a library may not raise it for one call. Instead the format is
    found through Pillow's plugin registry (``Image.ID``, ``Image.OPEN``) the way ``Image.open``
    finds it, and the size read from the header is checked here, before any pixel is decoded.
    """
    Image.init()  # registers every format plugin (once per process, as Image.open does when needed)
    prefix = fp.read(16)
    for name in Image.ID:
        factory, accept = Image.OPEN[name]
        verdict = accept(prefix) if accept is not None else True
        if not verdict or isinstance(verdict, str):  # a string is Pillow's note on why not this format
            continue
        fp.seek(0)
        try:
            opened = factory(fp, str(path))
        except (SyntaxError, IndexError, TypeError, struct.error):
            continue  # not this format after all: try the next, as Image.open does
        pixels = opened.width * opened.height
        if pixels > max_pixels:
            opened.close()
            raise ImageReadError(
                f"{path}: {opened.width}x{opened.height} = {pixels} pixels, more than the limit of {max_pixels}; "
                f"{_RAISE_LIMIT}"
            )
        return opened
    raise UnidentifiedImageError(f"cannot identify image file {str(path)!r}")


def load_image(image: ImageInput, max_pixels: int | None = None) -> np.ndarray:
    """Read an image as RGB.

    Args:
        image: a file path, a PIL image, or an array (HWC uint8 in [0, 255]; HW greyscale, uint16
            and floats in [0, 1] are converted). RGBA is composited over white, palette and 16-bit
            images are converted, EXIF orientation is applied.
        max_pixels: for files, the most pixels (width x height) an image may have, checked from its
            header before decoding; None keeps Pillow's guard against decompression bombs
            (``PIL.Image.MAX_IMAGE_PIXELS``, as the host program set it: it refuses beyond twice
            that, about 179 million pixels by default). Pillow's global setting is never changed.

    Returns:
        (H, W, 3) uint8 RGB array.

    Raises:
        ImageReadError: a missing, unreadable or corrupt file, one with more pixels than allowed, or
            an unsupported array.
        ValueError: ``max_pixels`` is not positive.
    """
    if max_pixels is not None and max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive number of pixels, not {max_pixels}")
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
        if max_pixels is None:
            with Image.open(path) as opened:
                opened.load()
                return _from_pil(opened)
        with open(path, "rb") as fp, _open_with_limit(path, fp, max_pixels) as opened:
            opened.load()
            return _from_pil(opened)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as error:  # over Pillow's own limit
        raise ImageReadError(f"{path}: too many pixels ({error}); {_RAISE_LIMIT}") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(f"{path}: not a readable image ({type(error).__name__}: {error})") from error


def resize_cv2(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An 8-bit image resized to ``size`` (H, W) by OpenCV's bilinear ``cv2.resize``, as mmcv's ``Resize`` (the
    training-free peers' data pipeline) resizes it: its fixed-point arithmetic, whose levels differ from an exact
    bilinear's by one in about an eighth of the pixels.

    Raises:
        ImportError: OpenCV is not installed (one line saying what to install).
    """
    try:
        import cv2
    except ImportError as error:
        raise ImportError('resize_filter "cv2" needs OpenCV: pip install "mvpseg[peers]" (opencv-python-headless), or '
                          'give --resize-filter bilinear (levels within one of it)') from error
    return cv2.resize(np.ascontiguousarray(image), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
