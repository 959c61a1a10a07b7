"""Where each dataset's files lie on disk, and how its stored label values read.

One reader per layout: ``(root, split) -> (ids, image paths, label paths)``, listed in mmseg's order (the
split file's, or the sorted file names), with a one-line :class:`DataLayoutError` naming any missing
folder or file, the expected layout and, for the files a ``mvpseg prepare`` command writes, that command.
:data:`LAYOUTS` gives each built-in dataset its reader and label rule; :func:`mvpseg.data.build_dataset`
opens them.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

__all__ = ["CITYSCAPES_LABEL_SUFFIX", "COCO_OBJECT_SUFFIX", "COCO_STUFF_SUFFIX", "CUSTOM_LAYOUT", "DataLayoutError", "LAYOUTS", "Layout", "OFFICIAL_VAL_SIZES", "VAL_SPLITS",
           "check_files", "custom_files", "not_found", "prepare_remedy"]

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
#: The label files the readers read and ``mvpseg prepare`` writes (mmsegmentation's names).
COCO_STUFF_SUFFIX = "_labelTrainIds.png"
COCO_OBJECT_SUFFIX = "_instanceTrainIds.png"
CITYSCAPES_LABEL_SUFFIX = "_gtFine_labelTrainIds.png"


class DataLayoutError(ValueError):
    """A dataset folder does not have the expected layout; the message is one line."""


def not_found(missing: Path, what: str, expected: str, remedy: str = "") -> DataLayoutError:
    """The one-line error of a missing folder or file: what, where, the expected layout, and the remedy (if any)."""
    return DataLayoutError(f"{what} not found: {missing} (expected layout: {expected}){remedy}")


def prepare_remedy(dataset: str, root: Path) -> str:
    """The end of an error about a file that a ``mvpseg prepare`` command makes."""
    return f"; make it with: mvpseg prepare {dataset} {root}"


#: The image count of each benchmark's official evaluation split, checked by :meth:`SegmentationDataset.describe`.
#: PC-459's is CAT-Seg's pascalcontext_val.txt (5,104 ids; mmseg's Context val.txt lists 5,105).
OFFICIAL_VAL_SIZES: dict[str, int] = {
    "voc": 1449, "voc21": 1449, "context": 5105, "context60": 5105, "coco-stuff": 5000, "coco-object": 5000,
    "cityscapes": 500, "ade20k": 2000, "ade847": 2000, "pc459": 5104,
}  # fmt: skip
VAL_SPLITS = ("val", "val2017", "validation")


def _read_split(path: Path, expected: str) -> list[str]:
    if not path.is_file():
        raise not_found(path, "split file", expected)
    ids = [line.strip().split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise DataLayoutError(f"split file {path} lists no ids (expected one id per line)")
    return ids


def _require_dir(path: Path, expected: str, remedy: str = "") -> Path:
    if not path.is_dir():
        raise not_found(path, "folder", expected, remedy)
    return path


def check_files(paths: Sequence[Path], what: str, expected: str, remedy: str = "") -> None:
    """Raise a one-line error naming the first missing file (one directory listing per folder)."""
    listing: dict[Path, set[str]] = {}
    missing = []
    for p in paths:
        if p.parent not in listing:
            listing[p.parent] = set(os.listdir(p.parent)) if p.parent.is_dir() else set()
        if p.name not in listing[p.parent]:
            missing.append(p)
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise DataLayoutError(f"{what} not found: {missing[0]}{more} (expected layout: {expected}){remedy}")


def _find_root(root: Path, candidates: Sequence[str], markers: Sequence[str], expected: str) -> Path:
    """The first of root/candidate (or root itself) that holds one of the marker entries."""
    if not root.exists():
        raise not_found(root, "dataset root", expected)
    for base in [*(root / c for c in candidates), root]:
        if any((base / m).exists() for m in markers):
            return base
    raise DataLayoutError(
        f"no dataset found under {root}: none of {[str(root / c) for c in candidates]} nor {root} "
        f"holds {' or '.join(markers)} (expected layout: {expected})"
    )


_VOC_LAYOUT = (
    "ROOT/VOCdevkit/VOC2012/{JPEGImages/<id>.jpg, SegmentationClass/<id>.png, [SegmentationClassAug/<id>.png], "
    "ImageSets/Segmentation/{train,val,[trainaug|train_aug|aug]}.txt}"
)
_VOC_AUG_LISTS = ("trainaug.txt", "train_aug.txt", "aug.txt")


def _voc_files(root: Path, split: str) -> tuple[list[str], list[Path], list[Path]]:
    base = _find_root(root, ["VOCdevkit/VOC2012", "VOC2012"], ["JPEGImages", "ImageSets"], _VOC_LAYOUT)
    _require_dir(base / "JPEGImages", _VOC_LAYOUT)
    sets = base / "ImageSets" / "Segmentation"
    aug_dir = base / "SegmentationClassAug"
    aug_list = next((sets / n for n in _VOC_AUG_LISTS if (sets / n).is_file()), None)
    if split == "trainaug" and (aug_list is None or not aug_dir.is_dir()):
        missing = aug_dir if not aug_dir.is_dir() else sets / "trainaug.txt"
        raise not_found(missing, "SBD aug set", _VOC_LAYOUT)
    class_dir = base / "SegmentationClass"
    if split in ("train", "trainaug") and aug_list is not None and aug_dir.is_dir():
        # Whatever the list's format, the standard set (10,582 images): train.txt's ids first, then the
        # list's others, minus val.txt's. mmseg's aug.txt holds only the 9,118 SBD ids outside VOC
        # train and val; trainaug.txt and DeepLab's train_aug.txt hold all 10,582.
        train = _read_split(sets / "train.txt", _VOC_LAYOUT)
        val = set(_read_split(sets / "val.txt", _VOC_LAYOUT))
        listed = [_list_id(token) for token in _read_split(aug_list, _VOC_LAYOUT)]
        ids = list(dict.fromkeys(i for i in [*train, *listed] if i not in val))
        # VOC's own train images keep their official labels (as mmseg and ZegCLIP read them); SBD's come
        # from SegmentationClassAug.
        own = set(train)
        label_dirs = [class_dir if i in own else aug_dir for i in ids]
    elif split in ("train", "val"):
        if split == "train" and aug_dir.is_dir():
            warnings.warn(
                f"{aug_dir} exists but no {'/'.join(_VOC_AUG_LISTS)} in {sets}; training on train.txt only",
                stacklevel=3,
            )
        ids = _read_split(sets / f"{split}.txt", _VOC_LAYOUT)
        label_dirs = [class_dir] * len(ids)
    else:
        raise ValueError(f"voc split {split!r}: expected 'train', 'val' or 'trainaug'")
    for folder in dict.fromkeys(label_dirs):
        _require_dir(folder, _VOC_LAYOUT)
    return ids, [base / "JPEGImages" / f"{i}.jpg" for i in ids], [d / f"{i}.png" for d, i in zip(label_dirs, ids)]


def _list_id(token: str) -> str:
    """The image id in a list's first column: the id itself, or DeepLab's image path (its file stem)."""
    return PurePosixPath(token).stem if "/" in token or token.lower().endswith(_IMAGE_SUFFIXES) else token


_CONTEXT_LAYOUT = (
    "ROOT/VOCdevkit/VOC2010/{JPEGImages/<id>.jpg, SegmentationClassContext/<id>.png, "
    "ImageSets/SegmentationContext/{train,val}.txt}"
)


def _context_files(root: Path, split: str) -> tuple[list[str], list[Path], list[Path]]:
    if split not in ("train", "val"):
        raise ValueError(f"context split {split!r}: expected 'train' or 'val'")
    base = _find_root(
        root, ["VOCdevkit/VOC2010", "VOC2010"], ["SegmentationClassContext", "JPEGImages"], _CONTEXT_LAYOUT
    )
    _require_dir(base / "JPEGImages", _CONTEXT_LAYOUT)
    label_dir = _require_dir(base / "SegmentationClassContext", _CONTEXT_LAYOUT)
    ids = _read_split(base / "ImageSets" / "SegmentationContext" / f"{split}.txt", _CONTEXT_LAYOUT)
    return ids, [base / "JPEGImages" / f"{i}.jpg" for i in ids], [label_dir / f"{i}.png" for i in ids]


_COCO_LAYOUT = (
    "ROOT/coco_stuff164k/{images/<split>/<id>.jpg, annotations/<split>/<id>_labelTrainIds.png} "
    "with <split> = train2017 or val2017"
)
_COCO_OBJECT_LAYOUT = (
    "ROOT/coco_stuff164k/{images/<split>/<id>.jpg, annotations/<split>/<id>_instanceTrainIds.png} "
    "with <split> = train2017 or val2017"
)


def _coco_files(
    root: Path, split: str, dataset: str, suffix: str, expected: str
) -> tuple[list[str], list[Path], list[Path]]:
    """COCO-Stuff 164k's images and the labels `<id><suffix>` a prepare command wrote beside the stuffthingmaps."""
    folder = {"train": "train2017", "val": "val2017"}.get(split, split)
    if folder not in ("train2017", "val2017"):
        raise ValueError(f"{dataset} split {split!r}: expected 'train' or 'val' (train2017/val2017)")
    base = _find_root(root, ["coco_stuff164k", "coco_object"], ["images", "annotations"], expected)
    image_dir = _require_dir(base / "images" / folder, expected)
    label_dir = _require_dir(base / "annotations" / folder, expected)
    ids = sorted(p.stem for p in image_dir.iterdir() if p.suffix.lower() == ".jpg")
    if not ids:
        raise DataLayoutError(f"no .jpg images in {image_dir} (expected layout: {expected})")
    return ids, [image_dir / f"{i}.jpg" for i in ids], [label_dir / f"{i}{suffix}" for i in ids]


def _coco_stuff_files(root: Path, split: str) -> tuple[list[str], list[Path], list[Path]]:
    return _coco_files(root, split, "coco-stuff", COCO_STUFF_SUFFIX, _COCO_LAYOUT)


def _coco_object_files(root: Path, split: str) -> tuple[list[str], list[Path], list[Path]]:
    return _coco_files(root, split, "coco-object", COCO_OBJECT_SUFFIX, _COCO_OBJECT_LAYOUT)


_CITYSCAPES_LAYOUT = (
    "ROOT/cityscapes/{leftImg8bit/<split>/<city>/<name>_leftImg8bit.png, "
    "gtFine/<split>/<city>/<name>_gtFine_labelTrainIds.png} with <split> = train or val"
)
_CITYSCAPES_IMAGE = "_leftImg8bit.png"


def _cityscapes_files(root: Path, split: str) -> tuple[list[str], list[Path], list[Path]]:
    if split not in ("train", "val"):
        raise ValueError(f"cityscapes split {split!r}: expected 'train' or 'val' (the test labels are not public)")
    base = _find_root(root, ["cityscapes"], ["leftImg8bit", "gtFine"], _CITYSCAPES_LAYOUT)
    image_dir = _require_dir(base / "leftImg8bit" / split, _CITYSCAPES_LAYOUT)
    label_dir = _require_dir(base / "gtFine" / split, _CITYSCAPES_LAYOUT)
    # As mmseg lists them: every *_leftImg8bit.png under the split, recursively, sorted by path.
    relative = sorted(
        os.path.relpath(os.path.join(folder, name), image_dir)
        for folder, _, names in os.walk(image_dir)
        for name in names
        if name.endswith(_CITYSCAPES_IMAGE)
    )
    if not relative:
        raise DataLayoutError(f"no *{_CITYSCAPES_IMAGE} images under {image_dir} (expected layout: {_CITYSCAPES_LAYOUT})")
    ids = [r[: -len(_CITYSCAPES_IMAGE)] for r in relative]  # "<city>/<city>_<seq>_<frame>"
    return ids, [image_dir / r for r in relative], [label_dir / f"{i}{CITYSCAPES_LABEL_SUFFIX}" for i in ids]


_ADE20K_LAYOUT = (
    "ROOT/ADEChallengeData2016/{images/<split>/<id>.jpg, annotations/<split>/<id>.png} "
    "with <split> = training or validation"
)


def _ade20k_files(root: Path, split: str) -> tuple[list[str], list[Path], list[Path]]:
    folder = {"train": "training", "val": "validation"}.get(split, split)
    if folder not in ("training", "validation"):
        raise ValueError(f"ade20k split {split!r}: expected 'train' or 'val' (training/validation)")
    base = _find_root(root, ["ADEChallengeData2016", "ade/ADEChallengeData2016"], ["images", "annotations"],
                      _ADE20K_LAYOUT)
    image_dir = _require_dir(base / "images" / folder, _ADE20K_LAYOUT)
    label_dir = _require_dir(base / "annotations" / folder, _ADE20K_LAYOUT)
    ids = sorted(p.stem for p in image_dir.iterdir() if p.suffix.lower() == ".jpg")
    if not ids:
        raise DataLayoutError(f"no .jpg images in {image_dir} (expected layout: {_ADE20K_LAYOUT})")
    return ids, [image_dir / f"{i}.jpg" for i in ids], [label_dir / f"{i}.png" for i in ids]


_ADE847_LAYOUT = (
    "ROOT/ADE20K_2021_17_01/{images_detectron2/validation/<name>.jpg, "
    "annotations_detectron2/validation/<name>.tif}, as CAT-Seg prepares them"
)


def _ade847_files(root: Path, split: str) -> tuple[list[str], list[Path], list[Path]]:
    if split not in ("val", "validation"):
        raise ValueError(f"ade847 split {split!r}: only 'val' (ADE20K_2021_17_01's 2,000 validation images)")
    base = _find_root(root, ["ADE20K_2021_17_01"],
                      ["images_detectron2", "annotations_detectron2", "images", "index_ade20k.mat"], _ADE847_LAYOUT)
    remedy = prepare_remedy("ade847", root)
    image_dir = _require_dir(base / "images_detectron2" / "validation", _ADE847_LAYOUT, remedy)
    _require_dir(base / "annotations_detectron2" / "validation", _ADE847_LAYOUT, remedy)
    ids = sorted(p.stem for p in image_dir.iterdir() if p.suffix.lower() == ".jpg")
    if not ids:
        raise DataLayoutError(f"no .jpg images in {image_dir} (expected layout: {_ADE847_LAYOUT}){remedy}")
    label_dir = base / "annotations_detectron2" / "validation"
    return ids, [image_dir / f"{i}.jpg" for i in ids], [label_dir / f"{i}.tif" for i in ids]


_PC459_LAYOUT = (
    "ROOT/VOCdevkit/VOC2010/{JPEGImages/<id>.jpg, annotations_detectron2/pc459_val/<id>.tif, "
    "pascalcontext_val.txt}, as CAT-Seg prepares them"
)


def _pc459_files(root: Path, split: str) -> tuple[list[str], list[Path], list[Path]]:
    if split != "val":
        raise ValueError(f"pc459 split {split!r}: only 'val' (the ids of pascalcontext_val.txt)")
    base = _find_root(root, ["VOCdevkit/VOC2010", "VOC2010"], ["JPEGImages", "annotations_detectron2", "trainval"],
                      _PC459_LAYOUT)
    _require_dir(base / "JPEGImages", _PC459_LAYOUT)
    label_dir = _require_dir(base / "annotations_detectron2" / "pc459_val", _PC459_LAYOUT,
                             prepare_remedy("pc459", root))
    ids = _read_split(base / "pascalcontext_val.txt", _PC459_LAYOUT)
    return ids, [base / "JPEGImages" / f"{i}.jpg" for i in ids], [label_dir / f"{i}.tif" for i in ids]


CUSTOM_LAYOUT = (
    "ROOT/{JPEGImages/<id>.jpg|.png, SegmentationClass/<id>.png, ImageSets/Segmentation/<split>.txt, "
    "class_names.txt, [unseen.txt]}"
)


def custom_files(root: Path, split: str) -> tuple[list[str], list[Path], list[Path]]:
    if not root.is_dir():
        raise not_found(root, "dataset root", CUSTOM_LAYOUT)
    image_dir = _require_dir(root / "JPEGImages", CUSTOM_LAYOUT)
    label_dir = _require_dir(root / "SegmentationClass", CUSTOM_LAYOUT)
    ids = _read_split(root / "ImageSets" / "Segmentation" / f"{split}.txt", CUSTOM_LAYOUT)
    # One listing of the image folder: id -> file, preferring .jpg over .jpeg over .png.
    rank = {suffix: r for r, suffix in enumerate(_IMAGE_SUFFIXES)}
    found: dict[str, Path] = {}
    for p in image_dir.iterdir():
        r = rank.get(p.suffix.lower())
        if r is not None and (p.stem not in found or r < rank[found[p.stem].suffix.lower()]):
            found[p.stem] = p
    images = [found.get(i, image_dir / f"{i}.jpg") for i in ids]
    return ids, images, [label_dir / f"{i}.png" for i in ids]


@dataclass(frozen=True)
class Layout:
    """How a built-in dataset lies on disk and how its stored label values read."""

    files: Callable[[Path, str], tuple[list[str], list[Path], list[Path]]]  # (root, split) -> ids, images, labels
    expected: str  # the layout, for error messages
    reduce_zero_label: bool = False  # stored 0 ignored, class k stored as k + 1
    stored_ignore: tuple[int, ...] = (255,)  # stored values that mean "ignore"
    label_values: int = 256  # 65536 for 16-bit labels
    prepare: str | None = None  # the `mvpseg prepare` dataset that writes the labels


LAYOUTS: dict[str, Layout] = {
    "voc": Layout(_voc_files, _VOC_LAYOUT, reduce_zero_label=True),
    "voc21": Layout(_voc_files, _VOC_LAYOUT),
    "context": Layout(_context_files, _CONTEXT_LAYOUT, reduce_zero_label=True),
    "context60": Layout(_context_files, _CONTEXT_LAYOUT),
    "coco-stuff": Layout(_coco_stuff_files, _COCO_LAYOUT, prepare="coco-stuff"),
    "coco-object": Layout(_coco_object_files, _COCO_OBJECT_LAYOUT, prepare="coco-object"),
    "cityscapes": Layout(_cityscapes_files, _CITYSCAPES_LAYOUT, prepare="cityscapes"),
    "ade20k": Layout(_ade20k_files, _ADE20K_LAYOUT, reduce_zero_label=True),
    "ade847": Layout(_ade847_files, _ADE847_LAYOUT, stored_ignore=(65535,), label_values=65536, prepare="ade847"),
    "pc459": Layout(_pc459_files, _PC459_LAYOUT, stored_ignore=(459, 65535), label_values=65536, prepare="pc459"),
}
