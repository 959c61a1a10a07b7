"""Prepare PASCAL Context-459 from the full Context annotations (``trainval/*.mat``), as CAT-Seg does.

CAT-Seg's ``datasets/prepare_pascal_context_459.py`` (cvlab-kaist/CAT-Seg) reads, for every id of
``VOC2010/pascalcontext_val.txt`` (5,104 ids), the ``LabelMap`` of ``VOC2010/trainval/<id>.mat``: a 16-bit
map of the 459 classes of Context's ``labels.txt``, 1..459. It writes ``LabelMap - 1`` in 16 bits, classes
0..458 (a 0, unlabelled, wraps to 65535), to

    VOC2010/annotations_detectron2/pc459_val/<id>.tif

and evaluates it with 459 as the ignore label. Here the same bytes are written, the .mat files read with
``scipy.io.loadmat`` (MATLAB's format: nothing is unpickled), a missing .mat is an error (CAT-Seg skips the
id), and the folder is built under a hidden name and renamed into place when complete.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..files import atomic_write, publish_dir, staging_dir
from .convert import run_conversions
from .datasets import DataLayoutError

__all__ = ["NUM_CLASSES", "pc459_labels", "prepare_pc459", "read_label_map"]

NUM_CLASSES = 459
_LAYOUT = "ROOT/VOCdevkit/VOC2010/{trainval/<id>.mat, pascalcontext_val.txt, JPEGImages/<id>.jpg}"
_SPLIT_SOURCE = "CAT-Seg's datasets/pascalcontext_val.txt (cvlab-kaist/CAT-Seg)"


def read_label_map(path: str | Path) -> np.ndarray:
    """The ``LabelMap`` of one Context ``trainval/<id>.mat``.

    Args:
        path: the .mat file (MATLAB 5 format, as Context ships it).

    Returns:
        (H, W) uint16, values 0..459.

    Raises:
        ImportError: scipy is not installed (pip install 'mvpseg[data]').
        DataLayoutError: the file cannot be read, has no LabelMap, or holds values outside 0..459.
    """
    try:
        from scipy.io import loadmat
        from scipy.io.matlab import MatReadError
    except ImportError as error:  # pragma: no cover - scipy is part of the data extra
        raise ImportError("reading Context's .mat files needs scipy: pip install 'mvpseg[data]'") from error
    try:
        mat = loadmat(str(path), variable_names=["LabelMap"])
    except (MatReadError, ValueError, TypeError, NotImplementedError, OSError) as error:
        # NotImplementedError: a MATLAB 7.3 (HDF5) file, which loadmat does not read.
        reason = " ".join(str(error).split()) or type(error).__name__
        raise DataLayoutError(f"cannot read {path} as a MATLAB file: {reason}") from None
    if "LabelMap" not in mat:
        raise DataLayoutError(f"{path} has no LabelMap (expected Context's trainval/<id>.mat)")
    label = np.asarray(mat["LabelMap"])
    if label.ndim != 2 or not (np.issubdtype(label.dtype, np.integer) or np.all(np.mod(label, 1) == 0)):
        raise DataLayoutError(f"{path}: LabelMap is not a 2-D integer map (shape {label.shape}, {label.dtype})")
    if label.size and (label.min() < 0 or label.max() > NUM_CLASSES):
        bad = np.unique(label[(label < 0) | (label > NUM_CLASSES)])[:8].tolist()
        raise DataLayoutError(f"{path}: LabelMap values {bad} outside 0..{NUM_CLASSES}")
    return label.astype(np.uint16)


def pc459_labels(label_map: np.ndarray) -> np.ndarray:
    """CAT-Seg's stored labels of a LabelMap: 16-bit ``LabelMap - 1`` (class k -> k - 1, 0 -> 65535).

    Args:
        label_map: (H, W) uint16, 0..459.

    Returns:
        (H, W) uint16.
    """
    return (label_map.astype(np.int64) - 1).astype(np.uint16)  # -1 wraps to 65535, as in CAT-Seg's uint16


def _convert(item: tuple[Path, Path]) -> None:
    source, target = item
    labels = pc459_labels(read_label_map(source))
    atomic_write(target, lambda tmp: Image.fromarray(labels).save(tmp, format="TIFF"))


def prepare_pc459(root: str | Path, num_workers: int = 1, progress: bool = True) -> int:
    """Write PC-459's validation labels as CAT-Seg lays them out (see the module docstring).

    An interrupted run can be restarted: what it wrote is kept, and the folder gets its name only once complete.

    Args:
        root: the folder holding VOCdevkit, VOCdevkit itself, or VOC2010 itself.
        num_workers: worker processes (1 = convert in this process).
        progress: show a tqdm bar.

    Returns:
        The number of labels converted in this run (0 when the folder was complete).

    Raises:
        DataLayoutError: pascalcontext_val.txt, the trainval folder or one of its .mat files is missing,
            or a .mat file is not a Context label map.
    """
    root = Path(root).expanduser()
    base = next((b for b in (root / "VOCdevkit" / "VOC2010", root / "VOC2010") if b.is_dir()), root)
    final = base / "annotations_detectron2" / "pc459_val"
    if final.is_dir():
        return 0
    split_file = base / "pascalcontext_val.txt"
    if not split_file.is_file():
        raise DataLayoutError(f"split file not found: {split_file} (the 5,104 PC-459 val ids: {_SPLIT_SOURCE})")
    ids = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
    mats = base / "trainval"
    if not mats.is_dir():
        raise DataLayoutError(f"folder not found: {mats} (Context's trainval.tar.gz; expected layout: {_LAYOUT})")
    present = set(os.listdir(mats))
    missing = [i for i in ids if f"{i}.mat" not in present]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise DataLayoutError(f"label not found: {mats / (missing[0] + '.mat')}{more} (expected layout: {_LAYOUT})")
    staging = staging_dir(final)
    staging.mkdir(parents=True, exist_ok=True)
    done = set(os.listdir(staging))
    todo = [(mats / f"{i}.mat", staging / f"{i}.tif") for i in ids if f"{i}.tif" not in done]
    count = run_conversions(_convert, todo, "pc459 labels", num_workers, progress)
    publish_dir(staging, final)
    return count
