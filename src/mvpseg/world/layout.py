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

:func:`write_ade20k_world` writes a world's val split in a benchmark's official layout instead (ADE20K's
``ADEChallengeData2016``), so that ``mvpseg benchmark`` and ``mvpseg eval --dataset ade20k`` run end to end offline.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from mvpseg.viz import voc_palette
from mvpseg.world.drawing import scene_rng
from mvpseg.world.registry import get_world

__all__ = ["write_ade20k_world", "write_world", "SPLIT_CODES"]

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


def write_ade20k_world(root: str | os.PathLike[str], num_images: int, seed: int = 0, image_size: int | None = None,
                       world: str = "parts") -> Path:
    """A world's val split in ADE20K's official layout, read by ``build_dataset("ade20k", root, "val")``::

        ROOT/ADEChallengeData2016/images/validation/ADE_val_<n>.jpg       JPEG, quality 95
        ROOT/ADEChallengeData2016/annotations/validation/ADE_val_<n>.png  greyscale: ADE-150 class k stored as k + 1

    A world class whose name is an ADE-150 class (the parts world's lamp, table, flower, grass, water, sand,
    sky) is stored as that class; the others, and the world's ignore pixels, as 0 ("other", which ADE's
    evaluation ignores). The images are the val images of :func:`write_world` with the same seed.

    Args:
        root: the data root (created); ``ROOT/ADEChallengeData2016`` is written.
        num_images: images in the split.
        seed: the world's seed.
        image_size: square image side in pixels (default: the world's).
        world: which world (:data:`mvpseg.world.registry.WORLDS`).

    Returns:
        The data root.
    """
    from mvpseg.data import dataset_info

    module = get_world(world)
    ade = {name: index + 1 for index, name in enumerate(dataset_info("ade20k").class_names)}
    lut = np.zeros(256, dtype=np.uint8)  # world value -> stored ADE value; unnamed classes and ignore: 0
    for index, name in enumerate(module.CLASS_NAMES):
        lut[index] = ade.get(name, 0)
    base = Path(root) / "ADEChallengeData2016"
    for folder in ("images/validation", "annotations/validation"):
        (base / folder).mkdir(parents=True, exist_ok=True)
    for index in range(num_images):
        scene = module.generate_scene(scene_rng(seed, SPLIT_CODES["val"], index),
                                      size=image_size or module.IMAGE_SIZE)
        name = f"ADE_val_{index + 1:08d}"
        Image.fromarray(scene.image).save(base / "images" / "validation" / f"{name}.jpg", quality=95)
        Image.fromarray(lut[scene.label], mode="L").save(base / "annotations" / "validation" / f"{name}.png")
    return Path(root)
