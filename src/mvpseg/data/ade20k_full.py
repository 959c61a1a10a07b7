"""Prepare ADE20K-847 from the full ADE20K release (ADE20K_2021_17_01), as CAT-Seg does, without its pickle.

CAT-Seg's ``datasets/prepare_ade20k_full.py`` (cvlab-kaist/CAT-Seg) takes the validation images (file names
``ADE_val_*.jpg``) from the release's index, reads each image's ``<name>_seg.png``, where a pixel's object
class is ``(R // 10) * 256 + G``, maps the 847 classes to train ids 0..846 (every other class to 65535,
ignored), shrinks images whose short side passes 512 to a short side of 512 (the image bilinear, the label
nearest, with OpenCV's pixel rules), and writes

    ADE20K_2021_17_01/images_detectron2/validation/<name>.jpg        (JPEG, quality 75)
    ADE20K_2021_17_01/annotations_detectron2/validation/<name>.tif   (16-bit train ids, 65535 ignored)

Here the same files are written, with two differences of means: the validation images are found by listing
``images/ADE`` (the index's ``folder``/``filename`` entries name the same files; its ``.pkl`` is never
unpickled), and the bilinear resize is torch's, whose geometry is OpenCV's but whose rounding may differ from
OpenCV's fixed-point arithmetic by one grey level before the JPEG encoding. Both folders are built under
hidden names and renamed into place when complete.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import cast

import numpy as np
from PIL import Image

from ..files import atomic_write, publish_dir, staging_dir
from .class_files import ade847_ade_ids
from .convert import run_conversions
from .datasets import DataLayoutError

__all__ = ["ade847_lut", "ade_object_classes", "find_ade_validation_images", "prepare_ade847", "resize_short_side"]

#: CAT-Seg's short-side limit: larger images are shrunk to it.
MAX_SHORT_SIDE = 512
#: The label of pixels of no ADE20K-847 class.
IGNORE = 65535
_LAYOUT = "ROOT/ADE20K_2021_17_01/images/ADE/validation/<scene>/ADE_val_<n>.jpg with <name>_seg.png beside it"


def ade_object_classes(seg: np.ndarray) -> np.ndarray:
    """The object class of each pixel of an ADE20K ``*_seg.png``.

    Args:
        seg: (H, W, 3 or 4) uint8 RGB(A) of the seg file.

    Returns:
        (H, W) int32: ``(R // 10) * 256 + G``.
    """
    return (seg[..., 0].astype(np.int32) // 10) * 256 + seg[..., 1].astype(np.int32)


@cache
def ade847_lut() -> np.ndarray:
    """The table from ADE20K object classes to ADE20K-847 train ids.

    Returns:
        (6656,) uint16 (every class a seg file can encode: (255 // 10) * 256 + 255 = 6655): the 847
        classes -> 0..846 in CAT-Seg's order, others -> 65535.
    """
    lut = np.full((255 // 10) * 256 + 256, IGNORE, dtype=np.uint16)
    lut[list(ade847_ade_ids())] = np.arange(847, dtype=np.uint16)
    return lut


def _new_size(height: int, width: int, max_short: int = MAX_SHORT_SIDE) -> tuple[int, int] | None:
    """CAT-Seg's target (height, width): the short side to ``max_short`` when it is longer; None when it is not."""
    if width >= height > max_short:
        return max_short, round(width / float(height) * max_short)
    if height >= width > max_short:
        return round(height / float(width) * max_short), max_short
    return None


def _nearest_indices(source: int, target: int) -> np.ndarray:
    """OpenCV INTER_NEAREST's source index of each target index: floor(i * source / target)."""
    scale = 1.0 / (target / source)
    return np.minimum(np.floor(np.arange(target) * scale).astype(np.int64), source - 1)


def resize_short_side(image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shrink an image and its label as CAT-Seg does when the short side passes 512.

    Args:
        image: (H, W, 3) or (H, W) uint8.
        label: (H, W) integer label map.

    Returns:
        The image, bilinear without antialiasing (OpenCV INTER_LINEAR's geometry), and the label, nearest
        (OpenCV INTER_NEAREST's rule), at the new size; both unchanged when the short side is at most 512.
    """
    size = _new_size(*label.shape)
    if size is None:
        return image, label
    import torch

    rows, cols = _nearest_indices(label.shape[0], size[0]), _nearest_indices(label.shape[1], size[1])
    small_label = label[rows[:, None], cols[None, :]]  # (h, w)
    pixels = torch.from_numpy(image.astype(np.float32))  # a writable copy
    pixels = pixels.permute(2, 0, 1)[None] if image.ndim == 3 else pixels[None, None]  # (1, C, H, W)
    small = torch.nn.functional.interpolate(pixels, size=size, mode="bilinear", align_corners=False, antialias=False)
    small = small.round().clamp(0, 255).to(torch.uint8)[0]  # (C, h, w)
    small_image = small.permute(1, 2, 0).numpy() if image.ndim == 3 else small[0].numpy()  # (h, w, C) or (h, w)
    return small_image, small_label


def find_ade_validation_images(base: Path) -> list[Path]:
    """The validation images of ADE20K_2021_17_01 by CAT-Seg's rule: the ``.jpg`` files named ``ADE_val_*``.

    Args:
        base: the ADE20K_2021_17_01 folder.

    Returns:
        Their paths, sorted by file name.

    Raises:
        DataLayoutError: no images/ADE folder, or no validation image in it.
    """
    images = base / "images" / "ADE"
    if not images.is_dir():
        raise DataLayoutError(f"folder not found: {images} (expected layout: {_LAYOUT})")
    found = [
        Path(folder) / name
        for folder, _, names in os.walk(images)
        for name in names
        if name.endswith(".jpg") and name.split("_")[1:2] == ["val"]
    ]
    if not found:
        raise DataLayoutError(f"no ADE_val_*.jpg under {images} (expected layout: {_LAYOUT})")
    return sorted(found, key=lambda path: path.name)


def _convert(source: Path, image_dir: Path | None, label_dir: Path | None) -> None:
    """Write one validation image and/or its label into the given folders (None: that output is done)."""
    seg_path = source.with_name(source.stem + "_seg.png")
    if not seg_path.is_file():
        raise DataLayoutError(f"label not found: {seg_path} (the _seg.png of {source}; expected layout: {_LAYOUT})")
    with Image.open(seg_path) as seg:
        classes = ade_object_classes(np.asarray(seg.convert("RGB") if seg.mode != "RGB" else seg))  # (H, W)
    with Image.open(source) as img:
        image = np.asarray(img if img.mode in ("RGB", "L") else img.convert("RGB"))  # stored pixels, no EXIF turn
    if image.shape[:2] != classes.shape:
        raise DataLayoutError(
            f"{seg_path} is {classes.shape[1]}x{classes.shape[0]} (WxH) but {source} is "
            f"{image.shape[1]}x{image.shape[0]}"
        )
    image, labels = resize_short_side(image, ade847_lut()[classes])
    if image_dir is not None:
        atomic_write(image_dir / source.name, lambda tmp: Image.fromarray(image).save(tmp, format="JPEG", quality=75))
    if label_dir is not None:
        atomic_write(label_dir / f"{source.stem}.tif", lambda tmp: Image.fromarray(labels).save(tmp, format="TIFF"))


def _convert_item(item: tuple[Path, Path | None, Path | None]) -> None:
    _convert(*item)


def prepare_ade847(root: str | Path, num_workers: int = 1, progress: bool = True) -> int:
    """Write ADE20K-847's validation images and labels as CAT-Seg lays them out (see the module docstring).

    An interrupted run can be restarted: what it wrote is kept, and the two folders get their names only
    once complete.

    Args:
        root: the folder holding ADE20K_2021_17_01, or ADE20K_2021_17_01 itself.
        num_workers: worker processes (1 = convert in this process).
        progress: show a tqdm bar.

    Returns:
        The number of images converted in this run (0 when both folders were complete).

    Raises:
        DataLayoutError: images/ADE is missing, an image has no _seg.png, or their sizes differ.
    """
    root = Path(root).expanduser()
    base = root / "ADE20K_2021_17_01" if (root / "ADE20K_2021_17_01").is_dir() else root
    finals = (base / "images_detectron2" / "validation", base / "annotations_detectron2" / "validation")
    if all(final.is_dir() for final in finals):
        return 0
    sources = find_ade_validation_images(base)
    # Each output goes to its staging folder unless its final folder is complete already.
    targets = [None if final.is_dir() else staging_dir(final) for final in finals]
    for target in targets:
        if target is not None:
            target.mkdir(parents=True, exist_ok=True)
    done = [set(os.listdir(target)) if target is not None else None for target in targets]
    todo = []
    for source in sources:
        # done[i] is a set wherever targets[i] is a folder
        image_dir = targets[0] if targets[0] is not None and source.name not in cast(set[str], done[0]) else None
        label_dir = targets[1] if targets[1] is not None and f"{source.stem}.tif" not in cast(set[str], done[1]) else None
        if image_dir is not None or label_dir is not None:
            todo.append((source, image_dir, label_dir))
    count = run_conversions(_convert_item, todo, "ade847 images", num_workers, progress)
    for target, final in zip(targets, finals):
        if target is not None:
            publish_dir(target, final)
    return count
