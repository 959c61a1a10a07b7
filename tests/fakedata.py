"""Write tiny datasets in each official on-disk layout, for tests.

Every writer returns the dataset folder it created and is deterministic given `seed`. Labels
are random rectangles of class values over a background; images colour each class with a
fixed palette colour plus noise, so images and labels agree. Row 0 of every stored label
starts with the stamp [0, 255, <highest stored class value>, 1], so tests can check the value
mapping on exact pixels:

    voc / context (background 0 -> ignore, k -> k - 1):  [255, 255, C - 1, 0]
    coco-stuff / custom / context60 (identity):         [0, 255, C - 1, 1]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from mvpseg.viz import voc_palette

# Row 0 of write_stuffthingmaps labels: raw stuffthingmaps ids and their train ids (by hand:
# used thing ids are 0..89 minus 11, 25, 28, 29, 44, 65, 67, 68, 70, 82; stuff 91..181 -> 80..170).
STUFFTHINGMAPS_STAMP_RAW = (0, 10, 11, 12, 26, 27, 30, 89, 90, 91, 181, 182, 255)
STUFFTHINGMAPS_STAMP_TRAIN_IDS = (0, 10, 255, 11, 24, 25, 26, 79, 255, 80, 170, 255, 255)


_COLORS = voc_palette().astype(np.int64)  # (256, 3)


def random_label(
    rng: np.random.Generator,
    size: tuple[int, int],
    values: Sequence[int],
    background: int,
    num_rects: int = 5,
) -> np.ndarray:
    """A (H, W) uint8 label: rectangles of random `values` over `background`, then the row-0 stamp.

    The stamp is [0, 255, max(values), 1] (see the module docstring).
    """
    h, w = size
    label = np.full((h, w), background, dtype=np.uint8)
    for _ in range(num_rects):
        y0, x0 = int(rng.integers(0, h - 1)), int(rng.integers(0, w - 1))
        y1, x1 = int(rng.integers(y0 + 1, h + 1)), int(rng.integers(x0 + 1, w + 1))
        label[y0:y1, x0:x1] = int(rng.choice(np.asarray(values)))
    label[0, :4] = [0, 255, max(values), 1]
    return label


def image_for(label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A (H, W, 3) uint8 RGB image: each label value's palette colour plus noise."""
    noise = rng.integers(-20, 21, size=(*label.shape, 3))
    return np.clip(_COLORS[label] + noise, 0, 255).astype(np.uint8)


def _save_label(label: np.ndarray, path: Path, palette: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(label)
    if palette:
        img.putpalette(voc_palette().ravel().tolist())  # "L" -> "P": the stored bytes stay the class indices
    img.save(path)


def _save_image(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, quality=95) if path.suffix == ".jpg" else Image.fromarray(image).save(
        path
    )


def _write_list(path: Path, ids: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in ids))


def write_voc(
    root: str | Path,
    num_train: int = 4,
    num_val: int = 2,
    size: tuple[int, int] = (48, 64),
    seed: int = 0,
    num_aug: int = 0,
    aug_format: str = "trainaug",
) -> Path:
    """PASCAL VOC 2012 under root/VOCdevkit/VOC2012 (palette labels 0..20, 255 void).

    Args:
        root: folder to create VOCdevkit in.
        num_train, num_val: images listed in train.txt / val.txt (labels in SegmentationClass).
        size: (H, W) of every image.
        seed: random seed.
        num_aug: when > 0, also write the SBD aug set: `num_aug` extra images, greyscale labels in
            SegmentationClassAug for train + extra ids, and its list in ImageSets/Segmentation.
        aug_format: the list's format: "trainaug" (trainaug.txt, train + extra ids), "deeplab"
            (DeepLab's train_aug.txt: "/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png" for train +
            extra), "deeplab-relative" (the same without the leading slashes) or "mmseg" (aug.txt:
            the extra ids only, in shuffled order as mmseg's converter writes them).

    Returns:
        The VOC2012 folder.
    """
    base = Path(root) / "VOCdevkit" / "VOC2012"
    rng = np.random.default_rng(seed)
    ids = [f"2007_{i:06d}" for i in range(num_train + num_val + num_aug)]
    train, val, extra = ids[:num_train], ids[num_train : num_train + num_val], ids[num_train + num_val :]
    for i in ids:
        label = random_label(rng, size, values=range(1, 21), background=0)
        _save_image(image_for(label, rng), base / "JPEGImages" / f"{i}.jpg")
        if i not in extra:
            _save_label(label, base / "SegmentationClass" / f"{i}.png", palette=True)
        if num_aug and i not in val:
            _save_label(label, base / "SegmentationClassAug" / f"{i}.png", palette=False)
    sets = base / "ImageSets" / "Segmentation"
    _write_list(sets / "train.txt", train)
    _write_list(sets / "val.txt", val)
    if num_aug and aug_format == "trainaug":
        _write_list(sets / "trainaug.txt", train + extra)
    elif num_aug and aug_format in ("deeplab", "deeplab-relative"):
        slash = "/" if aug_format == "deeplab" else ""
        _write_list(sets / "train_aug.txt",
                    [f"{slash}JPEGImages/{i}.jpg {slash}SegmentationClassAug/{i}.png" for i in train + extra])
    elif num_aug and aug_format == "mmseg":
        _write_list(sets / "aug.txt", [extra[k] for k in rng.permutation(len(extra))])
    elif num_aug:
        raise ValueError(f"unknown aug_format {aug_format!r}")
    return base


def write_context(
    root: str | Path, num_train: int = 4, num_val: int = 2, size: tuple[int, int] = (48, 64), seed: int = 0
) -> Path:
    """PASCAL Context under root/VOCdevkit/VOC2010 (greyscale labels 0..59, 0 = background), as mmseg's
    converter writes it; read as "context" (59 classes, background ignored) or "context60" (60 classes).

    Returns:
        The VOC2010 folder.
    """
    base = Path(root) / "VOCdevkit" / "VOC2010"
    rng = np.random.default_rng(seed)
    ids = [f"2008_{i:06d}" for i in range(num_train + num_val)]
    for i in ids:
        label = random_label(rng, size, values=range(1, 60), background=0)
        _save_image(image_for(label, rng), base / "JPEGImages" / f"{i}.jpg")
        _save_label(label, base / "SegmentationClassContext" / f"{i}.png", palette=False)
    sets = base / "ImageSets" / "SegmentationContext"
    _write_list(sets / "train.txt", ids[:num_train])
    _write_list(sets / "val.txt", ids[num_train:])
    return base


def write_coco_stuff(
    root: str | Path, num_train: int = 2, num_val: int = 2, size: tuple[int, int] = (48, 64), seed: int = 0
) -> Path:
    """COCO-Stuff 164k, already converted: root/coco_stuff164k with `<id>_labelTrainIds.png` (0..170, 255).

    Returns:
        The coco_stuff164k folder.
    """
    base = Path(root) / "coco_stuff164k"
    rng = np.random.default_rng(seed)
    for split, count, offset in (("train2017", num_train, 1), ("val2017", num_val, 500000)):
        for k in range(count):
            name = f"{offset + k:012d}"
            label = random_label(rng, size, values=range(171), background=255)
            _save_image(image_for(label, rng), base / "images" / split / f"{name}.jpg")
            _save_label(label, base / "annotations" / split / f"{name}_labelTrainIds.png", palette=False)
    return base


def write_stuffthingmaps(
    root: str | Path,
    splits: Sequence[str] = ("val2017",),
    num_images: int = 2,
    size: tuple[int, int] = (48, 64),
    seed: int = 0,
) -> Path:
    """Official (unconverted) COCO-Stuff: root/coco_stuff164k/annotations/<split>/<id>.png with raw ids.

    Labels hold random values of 0..182 and 255 (gap ids included); row 0 starts with
    STUFFTHINGMAPS_STAMP_RAW, whose train ids are STUFFTHINGMAPS_STAMP_TRAIN_IDS.

    Returns:
        The coco_stuff164k folder.
    """
    base = Path(root) / "coco_stuff164k"
    rng = np.random.default_rng(seed)
    for split in splits:
        for k in range(num_images):
            name = f"{k + 1:012d}"
            label = random_label(rng, size, values=range(183), background=255)
            label[0, : len(STUFFTHINGMAPS_STAMP_RAW)] = STUFFTHINGMAPS_STAMP_RAW
            _save_image(image_for(label, rng), base / "images" / split / f"{name}.jpg")
            _save_label(label, base / "annotations" / split / f"{name}.png", palette=False)
    return base


def write_custom(
    root: str | Path,
    class_names: Sequence[str] = ("sky", "grass", "red car", "tree"),
    unseen: Sequence[str] | None = ("tree",),
    num_train: int = 4,
    num_val: int = 2,
    size: tuple[int, int] = (48, 64),
    seed: int = 0,
    image_ext: str = ".png",
    palette: bool = True,
) -> Path:
    """The custom layout in root: JPEGImages, SegmentationClass, ImageSets/Segmentation, class_names.txt.

    Args:
        root: the dataset folder to create.
        class_names: written to class_names.txt (label values are their indices).
        unseen: written to unseen.txt; None writes no unseen.txt.
        num_train, num_val: images in train.txt / val.txt.
        size: (H, W) of every image.
        seed: random seed.
        image_ext: ".png" or ".jpg".
        palette: palette labels (else greyscale).

    Returns:
        root.
    """
    base = Path(root)
    rng = np.random.default_rng(seed)
    ids = [f"img_{i:03d}" for i in range(num_train + num_val)]
    for i in ids:
        label = random_label(rng, size, values=range(len(class_names)), background=0)
        _save_image(image_for(label, rng), base / "JPEGImages" / f"{i}{image_ext}")
        _save_label(label, base / "SegmentationClass" / f"{i}.png", palette=palette)
    _write_list(base / "ImageSets" / "Segmentation" / "train.txt", ids[:num_train])
    _write_list(base / "ImageSets" / "Segmentation" / "val.txt", ids[num_train:])
    (base / "class_names.txt").write_text("".join(f"{n}\n" for n in class_names))
    if unseen is not None:
        (base / "unseen.txt").write_text("".join(f"{n}\n" for n in unseen))
    return base
