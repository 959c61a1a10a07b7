"""Convert the official COCO-Stuff 164k stuffthingmaps to the label files of COCO-Stuff and COCO-Object.

The official maps store COCO category id - 1: things 0..89 (80 used, 10 gaps), stuff 91..181,
182 = "other" and 255 = unlabeled.

- COCO-Stuff (171 classes), `<id>_labelTrainIds.png`: the 171 used ids map, in order, to train ids
  0..170; every other value becomes 255 (ignore). This is what mmsegmentation's `coco_stuff164k.py` writes.
- COCO-Object (81 classes), `<id>_instanceTrainIds.png`: by the rule of GroupViT's converter as SCLIP ships
  it (`datasets/cvt_coco_object.py` of wangf3014/SCLIP): the 80 used thing ids map, in order, to 1..80, and
  every stuff id **and the unlabeled 255** to background 0, so that no pixel is ignored. The values that
  converter leaves as they are (the 10 unused thing ids, 90, 182..254: none occurs in the official maps)
  become 255 (ignore) here.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from ..files import atomic_write
from .convert import run_conversions
from .datasets import DataLayoutError
from .layouts import COCO_OBJECT_SUFFIX, COCO_STUFF_SUFFIX

__all__ = [
    "COCO_OBJECT_SUFFIX",
    "COCO_STUFF_SUFFIX",
    "COCO_STUFF_USED_IDS",
    "COCO_THING_IDS",
    "coco_object_lut",
    "coco_stuff_lut",
    "convert_stuffthingmap",
    "prepare_coco_object",
    "prepare_coco_stuff",
]

# The 10 COCO thing ids (stored minus one) that have no category.
_UNUSED_THING_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82)
#: The 80 thing ids of the stuffthingmaps, in category order.
COCO_THING_IDS: tuple[int, ...] = tuple(i for i in range(90) if i not in _UNUSED_THING_IDS)
#: The 91 stuff ids of the stuffthingmaps.
_STUFF_IDS: tuple[int, ...] = tuple(range(91, 182))
COCO_STUFF_USED_IDS: tuple[int, ...] = COCO_THING_IDS + _STUFF_IDS
assert len(COCO_THING_IDS) == 80 and len(COCO_STUFF_USED_IDS) == 171

_LAYOUT = "ROOT/coco_stuff164k/annotations/<split>/<id>.png (the official stuffthingmaps_trainval2017)"


def coco_stuff_lut() -> np.ndarray:
    """The 256-entry table from stuffthingmaps values to COCO-Stuff train ids.

    Returns:
        (256,) uint8: used ids -> 0..170 in order, everything else -> 255.
    """
    lut = np.full(256, 255, dtype=np.uint8)
    lut[list(COCO_STUFF_USED_IDS)] = np.arange(171, dtype=np.uint8)
    return lut


def coco_object_lut() -> np.ndarray:
    """The 256-entry table from stuffthingmaps values to COCO-Object labels (GroupViT / SCLIP's rule).

    Returns:
        (256,) uint8: thing ids -> 1..80 in order, stuff ids 91..181 and unlabeled 255 -> background 0,
        the values no official map holds -> 255 (ignore).
    """
    lut = np.full(256, 255, dtype=np.uint8)
    lut[list(COCO_THING_IDS)] = np.arange(1, 81, dtype=np.uint8)
    lut[list(_STUFF_IDS)] = 0
    lut[255] = 0
    return lut


_LUTS = {COCO_STUFF_SUFFIX: coco_stuff_lut, COCO_OBJECT_SUFFIX: coco_object_lut}


def convert_stuffthingmap(source: str | Path, suffix: str = COCO_STUFF_SUFFIX) -> Path:
    """Write `<id><suffix>` beside one stuffthingmaps PNG, atomically.

    Args:
        source: `annotations/<split>/<id>.png`.
        suffix: `_labelTrainIds.png` (COCO-Stuff's 171 train ids) or `_instanceTrainIds.png` (COCO-Object).

    Returns:
        The path written.

    Raises:
        DataLayoutError: the source is not an 8-bit greyscale map.
    """
    source = Path(source)
    target = source.with_name(source.stem + suffix)
    with Image.open(source) as img:
        raw = np.asarray(img)
    if raw.ndim != 2 or raw.dtype != np.uint8:
        raise DataLayoutError(
            f"{source} is not a greyscale 8-bit stuffthingmap (shape {raw.shape}, {raw.dtype})"
        )
    labels = _LUTS[suffix]()[raw]  # (H, W) uint8
    # Written beside the target, then renamed: an interrupted run never leaves a truncated label.
    return atomic_write(target, lambda tmp: Image.fromarray(labels).save(tmp, format="PNG"))


def _stuffthingmaps(root: str | Path, splits: Sequence[str], suffix: str) -> list[Path]:
    """The stuffthingmaps of the splits that have no `<id><suffix>` yet."""
    root = Path(root).expanduser()
    base = root / "coco_stuff164k" if (root / "coco_stuff164k").is_dir() else root
    todo: list[Path] = []
    for split in splits:
        folder = base / "annotations" / split
        if not folder.is_dir():
            raise DataLayoutError(f"folder not found: {folder} (expected layout: {_LAYOUT})")
        names = {p.name for p in folder.iterdir()}
        # Sources are the official <id>.png; anything with "TrainIds" in its name is a converter's output.
        todo += sorted(
            folder / n
            for n in names
            if n.endswith(".png") and "TrainIds" not in n and not n.startswith(".")
            and n[: -len(".png")] + suffix not in names
        )  # fmt: skip
    return todo


def _prepare(root: str | Path, splits: Sequence[str], suffix: str, what: str, num_workers: int,
             progress: bool) -> int:
    """Convert the stuffthingmaps of ``splits`` that have no ``<id><suffix>`` yet; the number written."""
    todo = _stuffthingmaps(root, splits, suffix)
    return run_conversions(partial(convert_stuffthingmap, suffix=suffix), todo, what, num_workers, progress)


def prepare_coco_stuff(
    root: str | Path,
    splits: Sequence[str] = ("train2017", "val2017"),
    num_workers: int = 1,
    progress: bool = True,
) -> int:
    """Convert every stuffthingmaps PNG of the given splits to `<id>_labelTrainIds.png` (171 train ids).

    Files already converted are skipped, so an interrupted run can simply be restarted.

    Args:
        root: the folder holding coco_stuff164k, or coco_stuff164k itself.
        splits: annotation sub-folders to convert.
        num_workers: worker processes (1 = convert in this process).
        progress: show a tqdm bar.

    Returns:
        The number of label files written.

    Raises:
        DataLayoutError: an annotations/<split> folder is missing.
    """
    return _prepare(root, splits, COCO_STUFF_SUFFIX, "coco-stuff labels", num_workers, progress)


def prepare_coco_object(
    root: str | Path,
    splits: Sequence[str] = ("train2017", "val2017"),
    num_workers: int = 1,
    progress: bool = True,
) -> int:
    """Convert every stuffthingmaps PNG of the given splits to COCO-Object's `<id>_instanceTrainIds.png`.

    Things become 1..80, stuff and unlabeled pixels background 0 (see the module docstring). Files
    already converted are skipped, so an interrupted run can simply be restarted.

    Args:
        root: the folder holding coco_stuff164k, or coco_stuff164k itself.
        splits: annotation sub-folders to convert.
        num_workers: worker processes (1 = convert in this process).
        progress: show a tqdm bar.

    Returns:
        The number of label files written.

    Raises:
        DataLayoutError: an annotations/<split> folder is missing.
    """
    return _prepare(root, splits, COCO_OBJECT_SUFFIX, "coco-object labels", num_workers, progress)
