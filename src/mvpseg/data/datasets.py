"""Readers for the benchmark datasets in their usual (mmsegmentation) on-disk layouts.

Each reader yields {"image": (H, W, 3) uint8 RGB, "label": (H, W) int64, "name": id}. Labels are
already in the model's label space: class indices 0..C-1 and `ignore_index` (255), with VOC and
Context-59 backgrounds mapped to ignore (context60 keeps background as class 0, as mmseg's 60 classes). A transform, when set, turns the pair into tensors.

    ROOT/VOCdevkit/VOC2012/{JPEGImages, SegmentationClass[Aug], ImageSets/Segmentation}   voc
    ROOT/VOCdevkit/VOC2010/{JPEGImages, SegmentationClassContext,
                            ImageSets/SegmentationContext}                       context, context60
    ROOT/coco_stuff164k/{images, annotations}/{train2017, val2017}                        coco-stuff
    ROOT/{JPEGImages, SegmentationClass, ImageSets/Segmentation, class_names.txt,
          unseen.txt}                                                                    custom
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..image import load_image
from .classes import DatasetInfo, canonical_name, dataset_info, read_class_names, unseen_indices

__all__ = [
    "DataLayoutError",
    "SegmentationDataset",
    "Transform",
    "build_dataset",
    "read_image",
    "read_label",
]

# A transform takes (image (H, W, 3) uint8, label (H, W) int64, rng) and returns
# (image (3, h, w) uint8 tensor, label (h', w') int64 tensor).
Transform = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[torch.Tensor, torch.Tensor]]

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class DataLayoutError(ValueError):
    """A dataset folder does not have the expected layout; the message is one line."""


def _fail(missing: Path, what: str, expected: str) -> DataLayoutError:
    return DataLayoutError(f"{what} not found: {missing} (expected layout: {expected})")


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as RGB, EXIF orientation applied (see :func:`mvpseg.load_image`).

    Args:
        path: any image file PIL can open.

    Returns:
        (H, W, 3) uint8 RGB array.
    """
    return load_image(path)


def read_label(path: str | Path) -> np.ndarray:
    """Read an index label map (palette or greyscale PNG) without any value mapping.

    Args:
        path: a palette ("P"), greyscale ("L") or 16/32-bit integer PNG.

    Returns:
        (H, W) int64 array of the stored indices.

    Raises:
        DataLayoutError: the file is a colour (RGB) image, not an index map.
    """
    with Image.open(path) as img:
        if img.mode not in ("P", "L", "I", "I;16", "I;16B", "I;16L", "1"):
            raise DataLayoutError(
                f"label {path} has mode {img.mode}; expected a palette or greyscale PNG of class indices"
            )
        return np.asarray(img).astype(np.int64)


def _label_lut(num_classes: int, ignore_index: int, reduce_zero_label: bool) -> np.ndarray:
    """A 256-entry table from stored label values to training labels; -1 marks invalid values."""
    lut = np.full(256, -1, dtype=np.int64)
    if reduce_zero_label:  # VOC / Context: 0 = background -> ignore, class k -> k - 1
        lut[0] = ignore_index
        lut[1 : num_classes + 1] = np.arange(num_classes)
    else:
        lut[:num_classes] = np.arange(num_classes)
    lut[ignore_index] = ignore_index
    return lut


class SegmentationDataset(Dataset):
    """A list of (image, label) files with a label space; see `build_dataset` to make one.

    Random transforms draw from `np.random.default_rng([seed, epoch, index])`, so a sample is
    the same whichever worker loads it. Call `set_epoch` before each epoch; with DataLoader
    workers, use `persistent_workers=False` so that workers see the new epoch.

    Attributes:
        info: the label space (class names, unseen split, ignore index).
        ids: sample ids, in split-file order.
        image_paths, label_paths: the files of each id.
        transform: None, or a callable (image, label, rng) -> (image tensor, label tensor).
        seed, epoch: the seeds of the per-sample random generator.
        split: the split's name ("train", "val", ...), or None.
    """

    def __init__(
        self,
        info: DatasetInfo,
        ids: Sequence[str],
        image_paths: Sequence[Path],
        label_paths: Sequence[Path],
        label_lut: np.ndarray,
        transform: Transform | None = None,
        seed: int = 0,
        split: str | None = None,
    ) -> None:
        """Args:
        info: the label space.
        ids, image_paths, label_paths: one entry per sample, same length.
        label_lut: (256,) int64 table from stored label values to 0..C-1 / ignore; -1 = invalid.
        transform: optional (image, label, rng) -> (image, label) tensors.
        seed: base seed of the random transforms.
        split: the split's name, shown by :meth:`describe`.
        """
        if not len(ids) == len(image_paths) == len(label_paths):
            raise ValueError("ids, image_paths and label_paths must have the same length")
        self.info = info
        self.ids = list(ids)
        self.image_paths = [Path(p) for p in image_paths]
        self.label_paths = [Path(p) for p in label_paths]
        self.label_lut = label_lut
        self.transform = transform
        self.seed = seed
        self.split = split
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return (
            f"SegmentationDataset(name={self.info.name!r}, samples={len(self)}, "
            f"classes={self.info.num_classes}, unseen={len(self.info.unseen)})"
        )

    @property
    def label_folders(self) -> dict[str, int]:
        """How many samples read their labels from each folder, by folder name, in order of first use.

        VOC's standard training set mixes two: VOC's own ``SegmentationClass`` and SBD's ``SegmentationClassAug``.
        """
        return dict(Counter(path.parent.name for path in self.label_paths))

    def describe(self) -> str:
        """One line for logs, e.g. "voc train: 10582 images (1464 SegmentationClass, 9118 SegmentationClassAug)"."""
        folders = ", ".join(f"{count} {folder}" for folder, count in self.label_folders.items())
        split = f" {self.split}" if self.split else ""
        return f"{self.info.name}{split}: {len(self)} images ({folders})"

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that seeds the random transforms.

        Args:
            epoch: the epoch number.
        """
        self.epoch = int(epoch)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Read one sample without transforms.

        Args:
            index: sample index.

        Returns:
            image (H, W, 3) uint8 RGB and label (H, W) int64 in 0..C-1 or ignore_index.

        Raises:
            DataLayoutError: the label's size differs from the image's, or it holds values
                outside the dataset's label space.
        """
        image_path, label_path = self.image_paths[index], self.label_paths[index]
        raw = read_label(label_path)
        image = read_image(image_path)
        if image.shape[:2] != raw.shape:
            # Labels are drawn on the stored pixels; a 90-degree EXIF rotation would swap the
            # sizes. Fall back to the stored orientation when that is what matches the label.
            with Image.open(image_path) as img:
                stored = np.asarray(img.convert("RGB"))
            if stored.shape[:2] != raw.shape:
                raise DataLayoutError(
                    f"label {label_path} is {raw.shape[1]}x{raw.shape[0]} (WxH) but its image "
                    f"{image_path} is {image.shape[1]}x{image.shape[0]}"
                )
            image = stored.copy()
        if raw.size and (raw.min() < 0 or raw.max() >= len(self.label_lut)):
            bad = np.unique(raw[(raw < 0) | (raw >= len(self.label_lut))])[:8].tolist()
            raise DataLayoutError(f"label {label_path} has values {bad} outside 0..255")
        label = self.label_lut[raw]
        if (label < 0).any():
            bad = np.unique(raw[label < 0])[:8].tolist()
            raise DataLayoutError(
                f"label {label_path} has values {bad} outside the {self.info.name} label space"
            )
        return image, label

    def __getitem__(self, index: int) -> dict:
        """One sample.

        Args:
            index: sample index.

        Returns:
            {"image": (H, W, 3) uint8 RGB ndarray, "label": (H, W) int64 ndarray, "name": id};
            with a transform: {"image": (3, h, w) uint8 tensor, "label": (h', w') int64 tensor,
            "name": id}.
        """
        image, label = self.load(index)
        if self.transform is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            image_t, label_t = self.transform(image, label, rng)
            return {"image": image_t, "label": label_t, "name": self.ids[index]}
        return {"image": image, "label": label, "name": self.ids[index]}


# --- layouts ------------------------------------------------------------------------------------------


def _read_split(path: Path, expected: str) -> list[str]:
    if not path.is_file():
        raise _fail(path, "split file", expected)
    ids = [line.strip().split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise DataLayoutError(f"split file {path} lists no ids (expected one id per line)")
    return ids


def _require_dir(path: Path, expected: str) -> Path:
    if not path.is_dir():
        raise _fail(path, "folder", expected)
    return path


def _check_files(paths: Sequence[Path], what: str, expected: str) -> None:
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
        raise DataLayoutError(f"{what} not found: {missing[0]}{more} (expected layout: {expected})")


def _find_root(root: Path, candidates: Sequence[str], markers: Sequence[str], expected: str) -> Path:
    """The first of root/candidate (or root itself) that holds one of the marker entries."""
    if not root.exists():
        raise _fail(root, "dataset root", expected)
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
        raise _fail(missing, "SBD aug set", _VOC_LAYOUT)
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


def _coco_stuff_files(root: Path, split: str) -> tuple[list[str], list[Path], list[Path]]:
    folder = {"train": "train2017", "val": "val2017"}.get(split, split)
    if folder not in ("train2017", "val2017"):
        raise ValueError(f"coco-stuff split {split!r}: expected 'train' or 'val' (train2017/val2017)")
    base = _find_root(root, ["coco_stuff164k"], ["images", "annotations"], _COCO_LAYOUT)
    image_dir = _require_dir(base / "images" / folder, _COCO_LAYOUT)
    label_dir = _require_dir(base / "annotations" / folder, _COCO_LAYOUT)
    ids = sorted(p.stem for p in image_dir.iterdir() if p.suffix.lower() == ".jpg")
    if not ids:
        raise DataLayoutError(f"no .jpg images in {image_dir} (expected layout: {_COCO_LAYOUT})")
    labels = [label_dir / f"{i}_labelTrainIds.png" for i in ids]
    if not (labels[0]).is_file() and (label_dir / f"{ids[0]}.png").is_file():
        raise DataLayoutError(
            f"{labels[0]} not found but {label_dir / (ids[0] + '.png')} is: convert the stuffthingmaps "
            f"first with mvpseg.data.prepare_coco_stuff({str(base)!r})"
        )
    return ids, [image_dir / f"{i}.jpg" for i in ids], labels


_CUSTOM_LAYOUT = (
    "ROOT/{JPEGImages/<id>.jpg|.png, SegmentationClass/<id>.png, ImageSets/Segmentation/<split>.txt, "
    "class_names.txt, [unseen.txt]}"
)


def _read_name_list(path: Path) -> list[str]:
    """Names one per line, blank and #comment lines skipped; an empty list is allowed."""
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def custom_info(
    root: str | Path, class_names_file: str | Path | None = None, unseen_file: str | Path | None = None
) -> DatasetInfo:
    """The label space of a dataset in the custom layout.

    Args:
        root: the dataset folder.
        class_names_file: overrides ROOT/class_names.txt.
        unseen_file: overrides ROOT/unseen.txt (when neither exists, no class is unseen).

    Returns:
        DatasetInfo named "custom".

    Raises:
        DataLayoutError: no class names file.
        ValueError: an unseen name is not a class name.
    """
    root = Path(root)
    names_path = Path(class_names_file) if class_names_file is not None else root / "class_names.txt"
    if not names_path.is_file():
        raise _fail(names_path, "class names file", _CUSTOM_LAYOUT)
    names = read_class_names(names_path)
    unseen_path = Path(unseen_file) if unseen_file is not None else root / "unseen.txt"
    unseen: tuple[int, ...] = ()
    if unseen_file is not None and not unseen_path.is_file():
        raise FileNotFoundError(f"unseen classes file not found: {unseen_path}")
    if unseen_path.is_file():
        unseen = unseen_indices(names, _read_name_list(unseen_path), source=str(unseen_path))
    return DatasetInfo("custom", tuple(names), unseen)


def _custom_files(root: Path, split: str) -> tuple[list[str], list[Path], list[Path]]:
    if not root.is_dir():
        raise _fail(root, "dataset root", _CUSTOM_LAYOUT)
    image_dir = _require_dir(root / "JPEGImages", _CUSTOM_LAYOUT)
    label_dir = _require_dir(root / "SegmentationClass", _CUSTOM_LAYOUT)
    ids = _read_split(root / "ImageSets" / "Segmentation" / f"{split}.txt", _CUSTOM_LAYOUT)
    # One listing of the image folder: id -> file, preferring .jpg over .jpeg over .png.
    rank = {suffix: r for r, suffix in enumerate(_IMAGE_SUFFIXES)}
    found: dict[str, Path] = {}
    for p in image_dir.iterdir():
        r = rank.get(p.suffix.lower())
        if r is not None and (p.stem not in found or r < rank[found[p.stem].suffix.lower()]):
            found[p.stem] = p
    images = [found.get(i, image_dir / f"{i}.jpg") for i in ids]
    return ids, images, [label_dir / f"{i}.png" for i in ids]


def _override_info(
    info: DatasetInfo, class_names_file: str | Path | None, unseen_file: str | Path | None
) -> DatasetInfo:
    """Built-in label space with class names and/or the unseen split replaced from files."""
    names = info.class_names
    if class_names_file is not None:
        names = tuple(read_class_names(class_names_file))
        if len(names) != info.num_classes:
            raise ValueError(
                f"{class_names_file}: {len(names)} names, but {info.name} has {info.num_classes} classes"
            )
    unseen = info.unseen
    if unseen_file is not None:
        unseen = unseen_indices(names, _read_name_list(Path(unseen_file)), source=str(unseen_file))
    return DatasetInfo(info.name, names, unseen, info.ignore_index)


def build_dataset(
    name: str,
    root: str | Path,
    split: str,
    transform: Transform | None = None,
    seed: int = 0,
    class_names_file: str | Path | None = None,
    unseen_file: str | Path | None = None,
) -> SegmentationDataset:
    """Open a dataset split in its usual on-disk layout.

    Args:
        name: "voc", "context" (59 classes, background ignored), "coco-stuff", "context60" (mmseg's 60
            classes, background class 0, as MaskCLIP+ measured Context) or "custom".
        root: the dataset folder; for voc/context/context60 the folder holding VOCdevkit, VOCdevkit itself
            or VOC20xx itself; for coco-stuff the folder holding coco_stuff164k or that folder.
        split: "train" or "val" ("trainaug" for voc: the SBD aug set, required; "train" uses it
            when present); custom: any ImageSets/Segmentation/<split>.txt.
        transform: optional (image, label, rng) -> (image, label) tensors (TrainAugmentation,
            EvalTransform).
        seed: base seed of the random transforms.
        class_names_file: replaces the class names (one per line, same count for built-ins).
        unseen_file: replaces the unseen split (unseen class names, one per line).

    Returns:
        The SegmentationDataset.

    Raises:
        DataLayoutError: a folder or file is missing (one line naming it and the layout).
        ValueError: unknown dataset or split; an unseen name not among the class names.
    """
    key = canonical_name(name)
    root = Path(root).expanduser()
    if key == "custom":
        ids, images, labels = _custom_files(root, split)
        info = custom_info(root, class_names_file, unseen_file)
        expected, reduce_zero = _CUSTOM_LAYOUT, False
    else:
        files = {"voc": _voc_files, "context": _context_files, "context60": _context_files,
                 "coco-stuff": _coco_stuff_files}[key]
        ids, images, labels = files(root, split)
        info = _override_info(dataset_info(key), class_names_file, unseen_file)
        expected = {"voc": _VOC_LAYOUT, "context": _CONTEXT_LAYOUT, "context60": _CONTEXT_LAYOUT}.get(key, _COCO_LAYOUT)
        reduce_zero = key in ("voc", "context")  # background 0 -> ignore; context60 keeps it as class 0
    _check_files(images, "image", expected)
    _check_files(labels, "label", expected)
    lut = _label_lut(info.num_classes, info.ignore_index, reduce_zero_label=reduce_zero)
    return SegmentationDataset(info, ids, images, labels, lut, transform=transform, seed=seed, split=split)
