"""Convert the official COCO-Stuff 164k stuffthingmaps to mmseg's `*_labelTrainIds.png`.

The official maps store COCO category id - 1: things 0..89 (80 used, 10 gaps), stuff 91..181,
182 = "other" and 255 = unlabeled. The 171 used ids map, in order, to train ids 0..170; every
other value becomes 255 (ignore). This is what mmsegmentation's `coco_stuff164k.py` writes.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from .datasets import DataLayoutError

__all__ = ["COCO_STUFF_USED_IDS", "coco_stuff_lut", "convert_stuffthingmap", "prepare_coco_stuff"]

# The 10 COCO thing ids (stored minus one) that have no category.
_UNUSED_THING_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82)
COCO_STUFF_USED_IDS: tuple[int, ...] = tuple(i for i in range(90) if i not in _UNUSED_THING_IDS) + tuple(
    range(91, 182)
)
assert len(COCO_STUFF_USED_IDS) == 171

_SUFFIX = "_labelTrainIds.png"
_LAYOUT = "ROOT/coco_stuff164k/annotations/<split>/<id>.png (the official stuffthingmaps_trainval2017)"


def coco_stuff_lut() -> np.ndarray:
    """The 256-entry table from stuffthingmaps values to train ids.

    Returns:
        (256,) uint8: used ids -> 0..170 in order, everything else -> 255.
    """
    lut = np.full(256, 255, dtype=np.uint8)
    lut[list(COCO_STUFF_USED_IDS)] = np.arange(171, dtype=np.uint8)
    return lut


def convert_stuffthingmap(source: str | Path) -> Path:
    """Write `<id>_labelTrainIds.png` beside one stuffthingmaps PNG, atomically.

    Args:
        source: `annotations/<split>/<id>.png`.

    Returns:
        The path written.
    """
    source = Path(source)
    target = source.with_name(source.stem + _SUFFIX)
    with Image.open(source) as img:
        raw = np.asarray(img)
    if raw.ndim != 2 or raw.dtype != np.uint8:
        raise DataLayoutError(
            f"{source} is not a greyscale 8-bit stuffthingmap (shape {raw.shape}, {raw.dtype})"
        )
    train_ids = coco_stuff_lut()[raw]
    # Write beside the target, then rename: an interrupted run never leaves a truncated label.
    fd, tmp = tempfile.mkstemp(prefix=f".{source.stem}.", suffix=".png", dir=source.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(train_ids).save(f, format="PNG")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def prepare_coco_stuff(
    root: str | Path,
    splits: Sequence[str] = ("train2017", "val2017"),
    num_workers: int = 1,
    progress: bool = True,
) -> int:
    """Convert every stuffthingmaps PNG of the given splits to `<id>_labelTrainIds.png`.

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
    root = Path(root).expanduser()
    base = root / "coco_stuff164k" if (root / "coco_stuff164k").is_dir() else root
    todo: list[Path] = []
    for split in splits:
        folder = base / "annotations" / split
        if not folder.is_dir():
            raise DataLayoutError(f"folder not found: {folder} (expected layout: {_LAYOUT})")
        names = {p.name for p in folder.iterdir()}
        todo += sorted(
            folder / n
            for n in names
            if n.endswith(".png") and not n.endswith(_SUFFIX) and not n.startswith(".")
            and n[: -len(".png")] + _SUFFIX not in names
        )  # fmt: skip
    bar = tqdm(total=len(todo), desc="coco-stuff labels", unit="file", disable=not progress)
    if num_workers > 1 and len(todo) > 1:
        with Pool(num_workers) as pool:
            for _ in pool.imap_unordered(convert_stuffthingmap, todo, chunksize=64):
                bar.update()
    else:
        for path in todo:
            convert_stuffthingmap(path)
            bar.update()
    bar.close()
    return len(todo)
