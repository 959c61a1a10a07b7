"""Writing the synthetic world to disk in the custom VOC layout the dataset readers understand.

::

    ROOT/JPEGImages/<id>.png             RGB images (PNG: lossless, so masks match pixels exactly)
    ROOT/SegmentationClass/<id>.png      palette PNGs, value = class index 0..C-1 (255 = ignore)
    ROOT/ImageSets/Segmentation/{train,val}.txt
    ROOT/class_names.txt                 one name per line, index order
    ROOT/unseen.txt                      unseen class names, one per line
    ROOT/SegmentationPart/<id>.png       parts world only: part kind of each thing pixel (255 elsewhere),
                                         for measuring where prompts look; never read for training
    ROOT/part_kinds.txt                  parts world only: part kind names, index order

Image ``i`` of a split is drawn from ``scene_rng(seed, split_code, i)``, so the files do not depend
on the number of worker processes.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from mvpseg.viz import voc_palette
from mvpseg.world.drawing import scene_rng
from mvpseg.world.registry import get_world

__all__ = ["write_world", "SPLIT_CODES"]

#: Seed-stream code of each split (pretraining and CLIP evaluation use their own codes, 2 and 3).
SPLIT_CODES = {"train": 0, "val": 1}


_PALETTE = voc_palette().ravel().tolist()


def _write_one(job: tuple[str, str, int, int, int, str]) -> str:
    root, split, seed, index, size, world = job
    scene = get_world(world).generate_scene(scene_rng(seed, SPLIT_CODES[split], index), size=size)
    image_id = f"{split}_{index:06d}"
    Image.fromarray(scene.image).save(os.path.join(root, "JPEGImages", f"{image_id}.png"), compress_level=1)
    for folder, values in (("SegmentationClass", scene.label), ("SegmentationPart", scene.parts)):
        if values is None:
            continue
        mask = Image.fromarray(values, mode="L").convert("P")
        mask.putpalette(_PALETTE)
        mask.save(os.path.join(root, folder, f"{image_id}.png"), compress_level=1)
    return image_id


def _jobs(root: Path, split: str, count: int, seed: int, size: int,
          world: str) -> Iterator[tuple[str, str, int, int, int, str]]:
    for index in range(count):
        yield (str(root), split, seed, index, size, world)


def write_world(
    root: str | os.PathLike[str],
    num_train: int,
    num_val: int,
    seed: int,
    image_size: int | None = None,
    num_workers: int = 1,
    progress: bool = True,
    world: str = "patterns",
) -> Path:
    """Generate the world's train and val splits and write them in the custom VOC layout.

    Args:
        root: output directory (created; existing files of the same ids are overwritten).
        num_train: number of training images.
        num_val: number of validation images.
        seed: the world's seed; the same seed writes the same files.
        image_size: square image side in pixels (default: the world's).
        num_workers: worker processes drawing images (1 = in this process).
        progress: show a tqdm bar.
        world: which world (:data:`mvpseg.world.registry.WORLDS`): patterns or parts.

    Returns:
        The root directory.
    """
    module = get_world(world)
    image_size = image_size or module.IMAGE_SIZE
    root = Path(root)
    has_parts = module.HAS_PARTS
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation") + (("SegmentationPart",) if has_parts else ()):
        (root / sub).mkdir(parents=True, exist_ok=True)
    if has_parts:
        (root / "part_kinds.txt").write_text("".join(f"{kind[0]}\n" for kind in module.PART_KINDS))
    jobs = [job for split, count in (("train", num_train), ("val", num_val))
            for job in _jobs(root, split, count, seed, image_size, world)]
    bar = tqdm(total=len(jobs), desc="world", unit="img", disable=not progress)
    if num_workers > 1:
        with multiprocessing.get_context("spawn").Pool(num_workers) as pool:
            for _ in pool.imap(_write_one, jobs, chunksize=64):
                bar.update()
    else:
        for job in jobs:
            _write_one(job)
            bar.update()
    bar.close()
    for split, count in (("train", num_train), ("val", num_val)):
        ids = "".join(f"{split}_{i:06d}\n" for i in range(count))
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text(ids)
    (root / "class_names.txt").write_text("".join(f"{name}\n" for name in module.CLASS_NAMES))
    (root / "unseen.txt").write_text("".join(f"{name}\n" for name in module.UNSEEN_CLASSES))
    return root
