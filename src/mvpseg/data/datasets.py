"""Readers for the benchmark datasets in their usual (mmsegmentation, CAT-Seg) on-disk layouts.

Each reader yields {"image": (H, W, 3) uint8 RGB, "label": (H, W) int64, "name": id}. Labels are
already in the model's label space: class indices 0..C-1 and `ignore_index` (255; 65535 for the two
large vocabularies). Each dataset's label rule (docs/datasets.md):

    voc (voc20), context (context59)  background 0 -> ignore, k -> k - 1, 255 ignored (reduce_zero_label)
    voc21, context60, coco-object     background kept as class 0, 255 ignored
    coco-stuff, cityscapes            train ids as stored, 255 ignored
    ade20k                            0 ("other") -> ignore, k -> k - 1 (mmseg's reduce_zero_label)
    ade847                            16-bit train ids 0..846 as stored, 65535 ignored
    pc459                             16-bit 0..458 as stored, 459 (CAT-Seg's ignore) and 65535 ignored

A transform, when set, turns the pair into tensors. The layouts (ROOT may also be the inner folder):

    ROOT/VOCdevkit/VOC2012/{JPEGImages, SegmentationClass[Aug], ImageSets/Segmentation}   voc, voc21
    ROOT/VOCdevkit/VOC2010/{JPEGImages, SegmentationClassContext,
                            ImageSets/SegmentationContext}                       context, context60
    ROOT/VOCdevkit/VOC2010/{JPEGImages, annotations_detectron2/pc459_val,
                            pascalcontext_val.txt}                                             pc459
    ROOT/coco_stuff164k/{images, annotations}/{train2017, val2017}            coco-stuff, coco-object
    ROOT/cityscapes/{leftImg8bit, gtFine}/{train, val}/<city>                             cityscapes
    ROOT/ADEChallengeData2016/{images, annotations}/{training, validation}                    ade20k
    ROOT/ADE20K_2021_17_01/{images_detectron2, annotations_detectron2}/validation             ade847
    ROOT/{JPEGImages, SegmentationClass, ImageSets/Segmentation, class_names.txt,
          unseen.txt}                                                                    custom
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..image import load_image
from ..vocabulary import Vocabulary, read_classes_file
from .classes import DatasetInfo, canonical_name, dataset_info, unseen_indices
from .layouts import (
    CUSTOM_LAYOUT,
    LAYOUTS,
    OFFICIAL_VAL_SIZES,
    VAL_SPLITS,
    DataLayoutError,
    Layout,
    check_files,
    custom_files,
    not_found,
    prepare_remedy,
)

__all__ = [
    "DataLayoutError",
    "OFFICIAL_VAL_SIZES",
    "SegmentationDataset",
    "Transform",
    "build_dataset",
    "read_image",
    "read_label",
]

# A transform takes (image (H, W, 3) uint8, label (H, W) int64, rng) and returns
# (image (3, h, w) uint8 tensor, label (h', w') int64 tensor).
Transform = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[torch.Tensor, torch.Tensor]]


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


def _label_lut(
    num_classes: int,
    ignore_index: int,
    reduce_zero_label: bool,
    stored_ignore: Sequence[int] = (255,),
    size: int = 256,
) -> np.ndarray:
    """A table from stored label values to training labels; -1 marks invalid values.

    Args:
        num_classes: C.
        ignore_index: the training label of ignored pixels.
        reduce_zero_label: stored 0 is ignored and class k is stored as k + 1 (VOC, Context-59, ADE20K).
        stored_ignore: stored values that mean "ignore" (255; 65535 for 16-bit labels).
        size: 256 for 8-bit labels, 65536 for 16-bit ones.

    Returns:
        (size,) int64.
    """
    lut = np.full(size, -1, dtype=np.int64)
    if reduce_zero_label:  # 0 = background / "other" -> ignore, class k -> k - 1
        lut[0] = ignore_index
        lut[1 : num_classes + 1] = np.arange(num_classes)
    else:
        lut[:num_classes] = np.arange(num_classes)
    lut[list(stored_ignore)] = ignore_index
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
        official_size: the image count of the official split (VOC val 1,449, ...), or None when unknown.
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
        official_size: int | None = None,
    ) -> None:
        """Args:
        info: the label space.
        ids, image_paths, label_paths: one entry per sample, same length.
        label_lut: (256,) or (65536,) int64 table from stored label values to 0..C-1 / ignore; -1 = invalid.
        transform: optional (image, label, rng) -> (image, label) tensors.
        seed: base seed of the random transforms.
        split: the split's name, shown by :meth:`describe`.
        official_size: the image count of the official split, when known (checked by :meth:`describe`).
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
        self.official_size = official_size
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
        """One line for logs, e.g. "voc train: 10582 images (1464 SegmentationClass, 9118 SegmentationClassAug)".

        Where the official split's size is known, the line ends with the size check: "; the official size"
        or "; the official val has 1449 (a partial or another copy)".
        """
        folders = ", ".join(f"{count} {folder}" for folder, count in self.label_folders.items())
        split = f" {self.split}" if self.split else ""
        line = f"{self.info.name}{split}: {len(self)} images ({folders})"
        if self.official_size is None:
            return line
        if len(self) == self.official_size:
            return f"{line}; the official size"
        return f"{line}; the official {self.split or 'split'} has {self.official_size} (a partial or another copy)"

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
            raise DataLayoutError(f"label {label_path} has values {bad} outside 0..{len(self.label_lut) - 1}")
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
        class_names_file: overrides ROOT/class_names.txt (one class per line; a line's names separated by
            commas are its synonyms, the first shown).
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
        raise not_found(names_path, "class names file", CUSTOM_LAYOUT)
    vocabulary = _read_vocabulary(names_path)
    names = vocabulary.display_names
    unseen_path = Path(unseen_file) if unseen_file is not None else root / "unseen.txt"
    unseen: tuple[int, ...] = ()
    if every_class_seen(unseen_file):
        return DatasetInfo("custom", tuple(names), (), prompt_names=vocabulary.classes if vocabulary.has_synonyms else ())
    if unseen_file is not None and not unseen_path.is_file():
        raise FileNotFoundError(f"unseen classes file not found: {unseen_path}")
    if unseen_path.is_file():
        unseen = unseen_indices(names, _read_name_list(unseen_path), source=str(unseen_path))
    return DatasetInfo("custom", tuple(names), unseen, prompt_names=vocabulary.classes if vocabulary.has_synonyms else ())


def _read_vocabulary(path: str | Path) -> Vocabulary:
    """A class file's classes (one per line, synonyms after commas, as ``--classes-file`` reads them)."""
    try:
        return Vocabulary.of(read_classes_file(path), warn=False)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def every_class_seen(unseen_file: str | Path | None) -> bool:
    """Whether an unseen file is the word "none": no unseen class, every class seen (the cross-dataset protocol's
    prompts, trained on all 171 COCO-Stuff classes as CAT-Seg and SAN train)."""
    return isinstance(unseen_file, str) and unseen_file.strip().lower() == "none"


def _override_info(
    info: DatasetInfo,
    class_names_file: str | Path | None,
    unseen_file: str | Path | None,
    prompt_names_file: str | Path | None = None,
) -> DatasetInfo:
    """Built-in label space with class names, the unseen split and/or the prompt names replaced from files."""
    names, prompts = info.class_names, info.prompt_names
    if class_names_file is not None:
        vocabulary = _read_vocabulary(class_names_file)
        if len(vocabulary.classes) != info.num_classes:
            raise ValueError(
                f"{class_names_file}: {len(vocabulary.classes)} names, but {info.name} has {info.num_classes} classes"
            )
        names = tuple(vocabulary.display_names)
        prompts = vocabulary.classes if vocabulary.has_synonyms else ()
    if prompt_names_file is not None:
        vocabulary = _read_vocabulary(prompt_names_file)
        if len(vocabulary.classes) != info.num_classes:
            raise ValueError(
                f"{prompt_names_file}: {len(vocabulary.classes)} classes, but {info.name} has {info.num_classes}"
            )
        prompts = vocabulary.classes
    unseen = info.unseen
    if every_class_seen(unseen_file):
        unseen = ()
    elif unseen_file is not None:
        unseen = unseen_indices(names, _read_name_list(Path(unseen_file)), source=str(unseen_file))
    return DatasetInfo(info.name, names, unseen, info.ignore_index, prompts)


def build_dataset(
    name: str,
    root: str | Path,
    split: str,
    transform: Transform | None = None,
    seed: int = 0,
    class_names_file: str | Path | None = None,
    unseen_file: str | Path | None = None,
    prompt_names_file: str | Path | None = None,
) -> SegmentationDataset:
    """Open a dataset split in its usual on-disk layout.

    Args:
        name: a built-in benchmark (see the module docstring; aliases such as "voc20" = "voc",
            "context59" = "context" accepted) or "custom".
        root: the folder holding the dataset's top folder (VOCdevkit, coco_stuff164k, cityscapes,
            ADEChallengeData2016, ADE20K_2021_17_01) or that folder itself; VOC20xx itself also works.
        split: "train" or "val" ("trainaug" for voc/voc21: the SBD aug set, required; "train" uses it
            when present; ade847 and pc459: "val" only); custom: any ImageSets/Segmentation/<split>.txt.
        transform: optional (image, label, rng) -> (image, label) tensors (TrainAugmentation,
            EvalTransform).
        seed: base seed of the random transforms.
        class_names_file: replaces the class names (one class per line, same count for built-ins; a
            line's comma-separated names are the class's synonyms, the first shown).
        unseen_file: replaces the unseen split (unseen class names, one per line); the word "none": no class unseen.
        prompt_names_file: gives the text tower each class's names from a class file (e.g.
            :func:`mvpseg.data.peer_class_file`), keeping the class names metrics are keyed by.

    Returns:
        The SegmentationDataset.

    Raises:
        DataLayoutError: a folder or file is missing (one line naming it, the layout, and the
            ``mvpseg prepare`` command that makes it where one does).
        ValueError: unknown dataset or split; an unseen name not among the class names.
    """
    key = canonical_name(name)
    root = Path(root).expanduser()
    if key == "custom":
        ids, images, labels = custom_files(root, split)
        info = custom_info(root, class_names_file, unseen_file)
        if prompt_names_file is not None:
            info = _override_info(info, None, None, prompt_names_file)
        layout = Layout(custom_files, CUSTOM_LAYOUT)
    else:
        layout = LAYOUTS[key]
        ids, images, labels = layout.files(root, split)
        info = _override_info(dataset_info(key), class_names_file, unseen_file, prompt_names_file)
    remedy = prepare_remedy(layout.prepare, root) if layout.prepare else ""
    check_files(images, "image", layout.expected)
    check_files(labels, "label", layout.expected, remedy)
    lut = _label_lut(info.num_classes, info.ignore_index, layout.reduce_zero_label, layout.stored_ignore,
                     layout.label_values)
    official = OFFICIAL_VAL_SIZES.get(key) if split in VAL_SPLITS else None
    return SegmentationDataset(info, ids, images, labels, lut, transform=transform, seed=seed, split=split,
                               official_size=official)
