"""Write Cityscapes' `*_gtFine_labelTrainIds.png` from the official `*_gtFine_labelIds.png`, without cityscapesscripts.

The official label ids (cityscapesscripts' ``helpers/labels.py``) map to the 19 train ids mmsegmentation and
every paper evaluate; the 15 void or unevaluated ids and the license plate (id -1, stored in an 8-bit PNG as
255) become 255 (ignore). cityscapesscripts draws the train-id images from the same polygons as the label-id
images, license plates skipped in both, so a table lookup on the label ids gives the same pixels.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..files import atomic_write
from .convert import run_conversions
from .datasets import DataLayoutError
from .layouts import CITYSCAPES_LABEL_SUFFIX as _TRAIN_IDS

__all__ = ["CITYSCAPES_TRAIN_IDS", "cityscapes_lut", "convert_cityscapes_label", "prepare_cityscapes"]

#: Official label id -> train id, for every id of the official table (cityscapesscripts' labels.py).
CITYSCAPES_TRAIN_IDS: dict[int, int] = {
    0: 255,  # unlabeled
    1: 255,  # ego vehicle
    2: 255,  # rectification border
    3: 255,  # out of roi
    4: 255,  # static
    5: 255,  # dynamic
    6: 255,  # ground
    7: 0,  # road
    8: 1,  # sidewalk
    9: 255,  # parking
    10: 255,  # rail track
    11: 2,  # building
    12: 3,  # wall
    13: 4,  # fence
    14: 255,  # guard rail
    15: 255,  # bridge
    16: 255,  # tunnel
    17: 5,  # pole
    18: 255,  # polegroup
    19: 6,  # traffic light
    20: 7,  # traffic sign
    21: 8,  # vegetation
    22: 9,  # terrain
    23: 10,  # sky
    24: 11,  # person
    25: 12,  # rider
    26: 13,  # car
    27: 14,  # truck
    28: 15,  # bus
    29: 255,  # caravan
    30: 255,  # trailer
    31: 16,  # train
    32: 17,  # motorcycle
    33: 18,  # bicycle
    -1: 255,  # license plate
}

_LABEL_IDS = "_gtFine_labelIds.png"
_LAYOUT = "ROOT/cityscapes/gtFine/<split>/<city>/<name>_gtFine_labelIds.png (the official gtFine_trainvaltest)"
_INVALID = -1


def cityscapes_lut() -> np.ndarray:
    """The 256-entry table from a labelIds PNG's stored values to train ids.

    Returns:
        (256,) int16: train ids 0..18 or 255; -1 for the values that are no official id (34..254).
    """
    lut = np.full(256, _INVALID, dtype=np.int16)
    for label_id, train_id in CITYSCAPES_TRAIN_IDS.items():
        lut[label_id % 256] = train_id  # -1 is stored as 255 in an 8-bit PNG
    return lut


def convert_cityscapes_label(source: str | Path) -> Path:
    """Write `<name>_gtFine_labelTrainIds.png` beside one `<name>_gtFine_labelIds.png`, atomically.

    Args:
        source: an official label-id PNG.

    Returns:
        The path written.

    Raises:
        DataLayoutError: the file is not an 8-bit greyscale map, or holds values that are no Cityscapes id.
    """
    source = Path(source)
    with Image.open(source) as img:
        raw = np.asarray(img)
    if raw.ndim != 2 or raw.dtype != np.uint8:
        raise DataLayoutError(f"{source} is not an 8-bit greyscale label-id map (shape {raw.shape}, {raw.dtype})")
    train_ids = cityscapes_lut()[raw]  # (H, W) int16
    if (train_ids == _INVALID).any():
        bad = np.unique(raw[train_ids == _INVALID])[:8].tolist()
        raise DataLayoutError(f"{source} holds values {bad} that are no Cityscapes label id (0..33, 255 for -1)")
    target = source.with_name(source.name[: -len(_LABEL_IDS)] + _TRAIN_IDS)
    labels = train_ids.astype(np.uint8)
    return atomic_write(target, lambda tmp: Image.fromarray(labels).save(tmp, format="PNG"))


def prepare_cityscapes(
    root: str | Path, splits: Sequence[str] = ("train", "val"), num_workers: int = 1, progress: bool = True
) -> int:
    """Write the train-id label of every official label-id PNG of the given gtFine splits.

    Files already converted are skipped, so an interrupted run can simply be restarted.

    Args:
        root: the folder holding cityscapes, or cityscapes itself.
        splits: gtFine sub-folders to convert.
        num_workers: worker processes (1 = convert in this process).
        progress: show a tqdm bar.

    Returns:
        The number of label files written.

    Raises:
        DataLayoutError: a gtFine/<split> folder is missing, or a label-id map is not one.
    """
    root = Path(root).expanduser()
    base = root / "cityscapes" if (root / "cityscapes").is_dir() else root
    todo: list[Path] = []
    for split in splits:
        folder = base / "gtFine" / split
        if not folder.is_dir():
            raise DataLayoutError(f"folder not found: {folder} (expected layout: {_LAYOUT})")
        for directory, _, names in sorted(os.walk(folder)):
            present = set(names)
            todo += [
                Path(directory) / name
                for name in sorted(names)
                if name.endswith(_LABEL_IDS) and name[: -len(_LABEL_IDS)] + _TRAIN_IDS not in present
            ]
    return run_conversions(convert_cityscapes_label, todo, "cityscapes labels", num_workers, progress)
