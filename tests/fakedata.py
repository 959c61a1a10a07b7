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


# --- the benchmarks outside MVP-SEG's protocol ----------------------------------------------------------------
# Each writer lays a dataset out as its official download (or the peers' prepared tree) has it. Labels hold
# random class rectangles; row 0 of every label starts with a stamp of stored values whose reading a test
# states by hand.


def write_coco_object(root: str | Path, num_val: int = 2, size: tuple[int, int] = (48, 64), seed: int = 0) -> Path:
    """COCO-Object as SCLIP's converter leaves it: coco_stuff164k/annotations/val2017/<id>_instanceTrainIds.png
    (0 = background, 1..80 things; the stamp [0, 255, 80, 1]).

    Returns:
        The coco_stuff164k folder.
    """
    base = Path(root) / "coco_stuff164k"
    rng = np.random.default_rng(seed)
    for k in range(num_val):
        name = f"{500000 + k:012d}"
        label = random_label(rng, size, values=range(81), background=0)
        _save_image(image_for(label, rng), base / "images" / "val2017" / f"{name}.jpg")
        _save_label(label, base / "annotations" / "val2017" / f"{name}_instanceTrainIds.png", palette=False)
    return base


#: The official Cityscapes label ids as stored in an 8-bit labelIds PNG: 0..33, and 255 for the license plate (-1).
CITYSCAPES_STORED_IDS = (*range(34), 255)


def write_cityscapes(
    root: str | Path,
    split: str = "val",
    cities: Sequence[str] = ("frankfurt", "lindau"),
    per_city: int = 1,
    size: tuple[int, int] = (32, 64),
    seed: int = 0,
    train_ids: bool = True,
) -> Path:
    """Cityscapes under root/cityscapes: leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png and
    gtFine/<split>/<city>/..._gtFine_labelIds.png (random official ids, row 0 holding every stored id, 0..33 and
    255) and, when `train_ids`, ..._gtFine_labelTrainIds.png (random 0..18 over 255; the stamp [0, 255, 18, 1]).

    Returns:
        The cityscapes folder.
    """
    base = Path(root) / "cityscapes"
    rng = np.random.default_rng(seed)
    for city in cities:
        for k in range(per_city):
            name = f"{city}_{k:06d}_{19 + k:06d}"
            ids = random_label(rng, size, values=CITYSCAPES_STORED_IDS, background=0)
            ids[0, : len(CITYSCAPES_STORED_IDS)] = CITYSCAPES_STORED_IDS
            image_path = base / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png"
            image_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image_for(ids, rng)).save(image_path, compress_level=0)  # a full-size frame, fast
            _save_label(ids, base / "gtFine" / split / city / f"{name}_gtFine_labelIds.png", palette=False)
            if train_ids:
                label = random_label(rng, size, values=range(19), background=255)
                _save_label(label, base / "gtFine" / split / city / f"{name}_gtFine_labelTrainIds.png", palette=False)
    return base


def write_ade20k(root: str | Path, num_val: int = 2, size: tuple[int, int] = (48, 64), seed: int = 0) -> Path:
    """ADEChallengeData2016 under root: images/validation/ADE_val_<n>.jpg, annotations/validation/ADE_val_<n>.png
    (0 = other, 1..150; the stamp [0, 255, 150, 1]).

    Returns:
        The ADEChallengeData2016 folder.
    """
    base = Path(root) / "ADEChallengeData2016"
    rng = np.random.default_rng(seed)
    for k in range(1, num_val + 1):
        name = f"ADE_val_{k:08d}"
        label = random_label(rng, size, values=range(1, 151), background=0)
        _save_image(image_for(label, rng), base / "images" / "validation" / f"{name}.jpg")
        _save_label(label, base / "annotations" / "validation" / f"{name}.png", palette=False)
    return base


def _save_uint16(label: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(label.astype(np.uint16)).save(path, format="TIFF")


def random_wide_label(rng: np.random.Generator, size: tuple[int, int], num_classes: int, background: int) -> np.ndarray:
    """A (H, W) int64 label of random rectangles of 0..num_classes - 1 over `background`."""
    h, w = size
    label = np.full((h, w), background, dtype=np.int64)
    for _ in range(5):
        y0, x0 = int(rng.integers(0, h - 1)), int(rng.integers(0, w - 1))
        y1, x1 = int(rng.integers(y0 + 1, h + 1)), int(rng.integers(x0 + 1, w + 1))
        label[y0:y1, x0:x1] = int(rng.integers(0, num_classes))
    return label


def write_ade847(root: str | Path, num_val: int = 2, size: tuple[int, int] = (48, 64), seed: int = 0) -> Path:
    """ADE20K-847 as CAT-Seg prepares it: ADE20K_2021_17_01/images_detectron2/validation/<name>.jpg and
    annotations_detectron2/validation/<name>.tif (16-bit 0..846, 65535 ignored; the stamp [0, 65535, 846, 1]).

    Returns:
        The ADE20K_2021_17_01 folder.
    """
    base = Path(root) / "ADE20K_2021_17_01"
    rng = np.random.default_rng(seed)
    for k in range(1, num_val + 1):
        name = f"ADE_val_{k:08d}"
        label = random_wide_label(rng, size, 847, background=65535)
        label[0, :4] = [0, 65535, 846, 1]
        _save_image(image_for(label % 256, rng), base / "images_detectron2" / "validation" / f"{name}.jpg")
        _save_uint16(label, base / "annotations_detectron2" / "validation" / f"{name}.tif")
    return base


def write_ade20k_full(
    root: str | Path,
    val_sizes: Sequence[tuple[int, int]] = ((40, 56), (520, 700)),
    object_classes: Sequence[int] = (2978, 97, 3148, 1),
    seed: int = 0,
) -> Path:
    """The full ADE20K release: ADE20K_2021_17_01/images/ADE/{validation,training}/<scene>/ADE_<split>_<n>.jpg,
    each with its <name>_seg.png (object class k of a pixel stored as R = (k // 256) * 10 + 7, G = k % 256: the
    7 is the instance digit a reader must drop), one training image among them.

    Args:
        val_sizes: (H, W) of each validation image.
        object_classes: the ADE object classes the seg files draw (random rectangles; row 0 holds them all).

    Returns:
        The ADE20K_2021_17_01 folder.
    """
    base = Path(root) / "ADE20K_2021_17_01"
    rng = np.random.default_rng(seed)
    images = [("validation", f"ADE_val_{k + 1:08d}", size) for k, size in enumerate(val_sizes)]
    images.append(("training", "ADE_train_00000001", (40, 56)))
    for k, (split, name, size) in enumerate(images):
        folder = base / "images" / "ADE" / split / ("a" if k % 2 == 0 else "b") / "scene"
        index = random_label(rng, size, values=range(len(object_classes)), background=0)
        index[0, :4] = 0  # random_label's stamp holds 255, no index here
        classes = np.asarray(object_classes)[index]  # (H, W) ADE object classes
        classes[0, 1 : 1 + len(object_classes)] = object_classes
        seg = np.zeros((*size, 3), dtype=np.uint8)
        seg[..., 0] = (classes // 256) * 10 + 7
        seg[..., 1] = classes % 256
        seg[..., 2] = 5
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(seg).save(folder / f"{name}_seg.png")
        _save_image(image_for(classes % 256, rng), folder / f"{name}.jpg")
    return base


def write_pascal_context_full(
    root: str | Path,
    val_ids: Sequence[str] = ("2008_000002", "2008_000003"),
    other_ids: Sequence[str] = ("2008_000001",),
    size: tuple[int, int] = (40, 56),
    seed: int = 0,
) -> Path:
    """PASCAL Context's full annotations: VOCdevkit/VOC2010/trainval/<id>.mat (uint16 LabelMap 1..459, row 0
    starting [1, 459, 0, 2]), JPEGImages/<id>.jpg and CAT-Seg's pascalcontext_val.txt listing `val_ids`.

    Returns:
        The VOC2010 folder.
    """
    from scipy.io import savemat

    base = Path(root) / "VOCdevkit" / "VOC2010"
    rng = np.random.default_rng(seed)
    (base / "trainval").mkdir(parents=True, exist_ok=True)
    for name in (*val_ids, *other_ids):
        label = random_wide_label(rng, size, 459, background=0) + 1  # 1..459
        label[0, :4] = [1, 459, 0, 2]
        savemat(base / "trainval" / f"{name}.mat", {"LabelMap": label.astype(np.uint16)})
        _save_image(image_for(label % 256, rng), base / "JPEGImages" / f"{name}.jpg")
    _write_list(base / "pascalcontext_val.txt", val_ids)
    return base


def write_pc459(root: str | Path, num_val: int = 2, size: tuple[int, int] = (40, 56), seed: int = 0) -> Path:
    """PC-459 as CAT-Seg prepares it: VOC2010/{JPEGImages/<id>.jpg, annotations_detectron2/pc459_val/<id>.tif
    (16-bit 0..458), pascalcontext_val.txt}; row 0 starts with the stamp [0, 459, 458, 65535, 1].

    Returns:
        The VOC2010 folder.
    """
    base = Path(root) / "VOCdevkit" / "VOC2010"
    rng = np.random.default_rng(seed)
    ids = [f"2008_{k:06d}" for k in range(num_val)]
    for name in ids:
        label = random_wide_label(rng, size, 459, background=0)
        label[0, :5] = [0, 459, 458, 65535, 1]
        _save_image(image_for(label % 256, rng), base / "JPEGImages" / f"{name}.jpg")
        _save_uint16(label, base / "annotations_detectron2" / "pc459_val" / f"{name}.tif")
    _write_list(base / "pascalcontext_val.txt", ids)
    return base
