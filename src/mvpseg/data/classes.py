"""Class names of the benchmarks and the standard seen/unseen splits of the zero-shot ones.

The names follow mmsegmentation's dataset classes, made readable for text prompts
("pottedplant" -> "potted plant", "wall-concrete" -> "concrete wall"); ADE20K-847 and PASCAL
Context-459 take theirs from CAT-Seg's lists (the files in ``class_names/``, see
:mod:`mvpseg.data.class_files`). The unseen splits are those of ZS3Net / MaskCLIP+ / ZegCLIP (see
METHOD.md, section 2); the benchmarks outside that protocol have none.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ..vocabulary import read_classes_file
from .class_files import PEER_CLASS_FILES, class_names_path

__all__ = [
    "DatasetInfo",
    "peer_class_file",
    "read_peer_classes",
    "dataset_info",
    "read_class_names",
    "unseen_indices",
    "VOC_CLASSES",
    "CONTEXT_CLASSES",
    "CONTEXT60_CLASSES",
    "COCO_STUFF_CLASSES",
    "MMSEG_CONTEXT_CLASSES",
    "MMSEG_CONTEXT60_CLASSES",
    "MMSEG_COCO_STUFF_CLASSES",
    "MMSEG_VOC_CLASSES",
    "VOC21_CLASSES",
    "COCO_OBJECT_CLASSES",
    "CITYSCAPES_CLASSES",
    "ADE20K_CLASSES",
    "BUILTIN_DATASETS",
]


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset's label space.

    Attributes:
        name: a canonical name of :data:`BUILTIN_DATASETS` ("voc", "ade20k", ...) or "custom".
        class_names: readable class names, in label-index order: what metrics are keyed by, and what
            the text tower is given unless `prompt_names` says otherwise.
        unseen: sorted indices of the unseen classes of the zero-shot split (may be empty).
        ignore_index: the label value of pixels that are not evaluated nor trained on.
        prompt_names: empty, or for each class the names the text tower scores it by (synonyms; the
            class takes the best of them), e.g. from SCLIP's class files.
    """

    name: str
    class_names: tuple[str, ...]
    unseen: tuple[int, ...]
    ignore_index: int = 255
    prompt_names: tuple[tuple[str, ...], ...] = ()

    def __post_init__(self) -> None:
        names = tuple(self.class_names)
        if not names:
            raise ValueError(f"dataset {self.name!r}: no class names")
        duplicates = sorted(n for n, c in Counter(names).items() if c > 1)
        if duplicates:
            raise ValueError(f"dataset {self.name!r}: duplicate class names {duplicates}")
        unseen = tuple(sorted({int(i) for i in self.unseen}))
        bad = [i for i in unseen if not 0 <= i < len(names)]
        if bad:
            raise ValueError(f"dataset {self.name!r}: unseen indices {bad} outside 0..{len(names) - 1}")
        if 0 <= self.ignore_index < len(names):
            raise ValueError(f"dataset {self.name!r}: ignore_index {self.ignore_index} is a class index")
        prompts = tuple(tuple(str(n).strip() for n in entry) for entry in self.prompt_names)
        if prompts and len(prompts) != len(names):
            raise ValueError(f"dataset {self.name!r}: {len(prompts)} prompt name lists for {len(names)} classes")
        if any(not entry or not all(entry) for entry in prompts):
            raise ValueError(f"dataset {self.name!r}: a class has no or an empty prompt name")
        # Frozen dataclass: normalise the stored tuples in place.
        object.__setattr__(self, "class_names", names)
        object.__setattr__(self, "unseen", unseen)
        object.__setattr__(self, "prompt_names", prompts)

    @property
    def num_classes(self) -> int:
        """Number of classes C (labels take values 0..C-1 or ignore_index)."""
        return len(self.class_names)

    @property
    def text_classes(self) -> list[tuple[str, ...]]:
        """Each class's names as the text tower scores them: `prompt_names`, else each class name alone."""
        return list(self.prompt_names) if self.prompt_names else [(name,) for name in self.class_names]

    @property
    def seen(self) -> tuple[int, ...]:
        """Indices of the seen classes, ascending."""
        unseen = set(self.unseen)
        return tuple(i for i in range(len(self.class_names)) if i not in unseen)

    @property
    def seen_names(self) -> tuple[str, ...]:
        """Names of the seen classes, in index order."""
        return tuple(self.class_names[i] for i in self.seen)

    @property
    def unseen_names(self) -> tuple[str, ...]:
        """Names of the unseen classes, in index order."""
        return tuple(self.class_names[i] for i in self.unseen)


# --- PASCAL VOC 2012: 20 classes, background ignored -----------------------------------------------
MMSEG_VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "dining table", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train",
    "tv monitor",
)  # fmt: skip
VOC_UNSEEN_NAMES = ("pottedplant", "sheep", "sofa", "train", "tvmonitor")

# --- PASCAL Context: 59 classes (mmseg PascalContextDataset59), background ignored -----------------
MMSEG_CONTEXT_CLASSES: tuple[str, ...] = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle",
    "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow",
    "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass", "ground",
    "horse", "keyboard", "light", "motorbike", "mountain", "mouse", "person", "plate", "platform",
    "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky", "snow", "sofa",
    "table", "track", "train", "tree", "truck", "tvmonitor", "wall", "water", "window", "wood",
)  # fmt: skip
_CONTEXT_READABLE = {"bedclothes": "bed clothes", "pottedplant": "potted plant", "tvmonitor": "tv monitor"}
CONTEXT_CLASSES: tuple[str, ...] = tuple(_CONTEXT_READABLE.get(n, n) for n in MMSEG_CONTEXT_CLASSES)
CONTEXT_UNSEEN_NAMES = (
    "aeroplane", "bird", "boat", "cat", "cow", "fence", "keyboard", "motorbike", "sofa", "tvmonitor",
)  # fmt: skip

# --- PASCAL Context: 60 classes (mmseg PascalContextDataset), background kept as class 0 -------------
# The label space of MaskCLIP+'s published Context figures: labels 0..59 as stored, the same 10 unseen
# names, at indices [1, 7, 8, 15, 20, 25, 32, 34, 49, 55].
MMSEG_CONTEXT60_CLASSES: tuple[str, ...] = ("background", *MMSEG_CONTEXT_CLASSES)
CONTEXT60_CLASSES: tuple[str, ...] = ("background", *CONTEXT_CLASSES)

# --- COCO-Stuff 164k: 171 classes (mmseg COCOStuffDataset), 80 things then 91 stuff -----------------
MMSEG_COCO_STUFF_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush", "banner", "blanket", "branch", "bridge",
    "building-other", "bush", "cabinet", "cage", "cardboard", "carpet", "ceiling-other",
    "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard", "curtain", "desk-stuff",
    "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile",
    "floor-wood", "flower", "fog", "food-other", "fruit", "furniture-other", "grass", "gravel",
    "ground-other", "hill", "house", "leaves", "light", "mat", "metal", "mirror-stuff", "moss",
    "mountain", "mud", "napkin", "net", "paper", "pavement", "pillow", "plant-other", "plastic",
    "platform", "playingfield", "railing", "railroad", "river", "road", "rock", "roof", "rug",
    "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow", "solid-other", "stairs",
    "stone", "straw", "structural-other", "table", "tent", "textile-other", "towel", "tree",
    "vegetable", "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone",
    "wall-tile", "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
)  # fmt: skip
_COCO_STUFF_READABLE = {
    "building-other": "building", "ceiling-other": "ceiling", "ceiling-tile": "ceiling tile",
    "desk-stuff": "desk", "door-stuff": "door", "floor-marble": "marble floor", "floor-other": "floor",
    "floor-stone": "stone floor", "floor-tile": "tile floor", "floor-wood": "wooden floor",
    "food-other": "food", "furniture-other": "furniture", "ground-other": "ground",
    "mirror-stuff": "mirror", "plant-other": "plant", "playingfield": "playing field",
    "sky-other": "sky", "solid-other": "solid", "structural-other": "structure",
    "textile-other": "textile", "wall-brick": "brick wall", "wall-concrete": "concrete wall",
    "wall-other": "wall", "wall-panel": "wall panel", "wall-stone": "stone wall",
    "wall-tile": "tile wall", "wall-wood": "wooden wall", "water-other": "water",
    "waterdrops": "water drops", "window-blind": "window blind", "window-other": "window",
}  # fmt: skip
COCO_STUFF_CLASSES: tuple[str, ...] = tuple(_COCO_STUFF_READABLE.get(n, n) for n in MMSEG_COCO_STUFF_CLASSES)
COCO_STUFF_UNSEEN_NAMES = (
    "cow", "giraffe", "suitcase", "frisbee", "skateboard", "carrot", "scissors", "cardboard",
    "clouds", "grass", "playingfield", "river", "road", "tree", "wall-concrete",
)  # fmt: skip


# --- PASCAL VOC 2012 with background: 21 classes (mmseg PascalVOCDataset), background = class 0 ------
VOC21_CLASSES: tuple[str, ...] = ("background", *VOC_CLASSES)

# --- COCO-Object: background + COCO's 80 things (GroupViT / SCLIP COCOObjectDataset) ------------------
COCO_OBJECT_CLASSES: tuple[str, ...] = ("background", *COCO_STUFF_CLASSES[:80])

# --- Cityscapes: the 19 evaluated train ids (mmseg CityscapesDataset) -------------------------------
CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip

# --- ADE20K (ADEChallengeData2016): 150 classes (mmseg ADE20KDataset), 0 = "other" is ignored ----------
ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass", "clock", "flag",
)  # fmt: skip

#: The ignore value of the label spaces with more than 255 classes (ADE20K-847, Context-459): CAT-Seg's 16-bit one.
WIDE_IGNORE_INDEX = 65535


def unseen_indices(
    class_names: Iterable[str], unseen_names: Iterable[str], *, source: str = ""
) -> tuple[int, ...]:
    """Indices of the unseen classes, looked up by name.

    Args:
        class_names: all class names, in index order.
        unseen_names: the unseen names; each must be one of `class_names`.
        source: where the names came from (a file), quoted in the error message.

    Returns:
        The sorted indices of the unseen classes.

    Raises:
        ValueError: an unseen name is not a class name (the message names it).
    """
    names = list(class_names)
    index = {n: i for i, n in enumerate(names)}
    wanted = list(unseen_names)
    missing = [n for n in wanted if n not in index]
    if missing:
        where = f" in {source}" if source else ""
        raise ValueError(f"unseen class names{where} not among the class names: {missing}")
    return tuple(sorted({index[n] for n in wanted}))


#: The built-in datasets' canonical names, in the papers' column order where they have one.
BUILTIN_DATASETS: tuple[str, ...] = (
    "voc21", "context60", "coco-object", "voc", "context", "coco-stuff", "cityscapes", "ade20k", "ade847", "pc459",
)  # fmt: skip


@cache
def _builtin(key: str) -> DatasetInfo:
    """The built-in label space of a canonical name (the two large vocabularies read from their files once)."""
    if key == "voc":
        return DatasetInfo("voc", VOC_CLASSES, unseen_indices(MMSEG_VOC_CLASSES, VOC_UNSEEN_NAMES))
    if key == "context":
        return DatasetInfo("context", CONTEXT_CLASSES, unseen_indices(MMSEG_CONTEXT_CLASSES, CONTEXT_UNSEEN_NAMES))
    if key == "coco-stuff":
        return DatasetInfo(
            "coco-stuff", COCO_STUFF_CLASSES, unseen_indices(MMSEG_COCO_STUFF_CLASSES, COCO_STUFF_UNSEEN_NAMES)
        )
    if key == "context60":
        return DatasetInfo(
            "context60", CONTEXT60_CLASSES, unseen_indices(MMSEG_CONTEXT60_CLASSES, CONTEXT_UNSEEN_NAMES)
        )
    if key in ("ade847", "pc459"):  # each class shown under its first name (the files make them unique)
        names = tuple(names[0] for names in read_classes_file(class_names_path(f"{key}.txt")))
        return DatasetInfo(key, names, (), ignore_index=WIDE_IGNORE_INDEX)
    names = {"voc21": VOC21_CLASSES, "coco-object": COCO_OBJECT_CLASSES, "cityscapes": CITYSCAPES_CLASSES,
             "ade20k": ADE20K_CLASSES}[key]
    return DatasetInfo(key, names, ())


_ALIASES = {
    "pascal-voc": "voc", "voc2012": "voc", "voc20": "voc", "voc-20": "voc", "pascal-voc20": "voc",
    "voc-21": "voc21", "pascal-voc21": "voc21", "voc2012-21": "voc21",
    "pascal-context": "context", "context59": "context", "context-59": "context", "pc59": "context",
    "pc-59": "context",
    "context-60": "context60", "pascal-context-60": "context60", "pascal-context60": "context60", "pc60": "context60",
    "pc-60": "context60",
    "cocostuff": "coco-stuff", "coco-stuff164k": "coco-stuff", "coco-stuff-164k": "coco-stuff",
    "cocoobject": "coco-object", "coco-obj": "coco-object", "coco-objects": "coco-object",
    "city-scapes": "cityscapes",
    "ade": "ade20k", "ade150": "ade20k", "ade-150": "ade20k", "ade20k-150": "ade20k",
    "ade-847": "ade847", "ade20k-847": "ade847", "ade20k-full": "ade847", "ade-full": "ade847",
    "pc-459": "pc459", "context459": "pc459", "context-459": "pc459", "pascal-context-459": "pc459",
}  # fmt: skip


def canonical_name(name: str) -> str:
    """The canonical dataset name (one of :data:`BUILTIN_DATASETS`, or "custom") for a name or alias.

    Args:
        name: a dataset name; case, "_" and "-" are interchangeable ("coco_stuff", "COCO-Stuff").

    Returns:
        The canonical name.

    Raises:
        ValueError: unknown name (the message lists the valid names).
    """
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key in BUILTIN_DATASETS or key == "custom":
        return key
    raise ValueError(
        f"unknown dataset {name!r}; valid names: {', '.join([*BUILTIN_DATASETS, 'custom'])} "
        "(also voc20 = voc, context59 = context)"
    )


def dataset_info(name: str) -> DatasetInfo:
    """The label space of a built-in benchmark.

    Args:
        name: one of :data:`BUILTIN_DATASETS` (aliases such as "coco_stuff", "voc20", "context59" accepted).

    Returns:
        The dataset's DatasetInfo (readable class names and the standard unseen split).

    Raises:
        ValueError: unknown name, or "custom" (whose classes live in its folder: use build_dataset).
    """
    key = canonical_name(name)
    if key == "custom":
        raise ValueError(
            "dataset 'custom' has no built-in classes; they are read from ROOT/class_names.txt "
            f"by build_dataset; built-in names: {', '.join(BUILTIN_DATASETS)}"
        )
    return _builtin(key)


def read_class_names(path: str | Path) -> list[str]:
    """Read class names, one per line.

    Blank lines and lines starting with "#" are skipped; surrounding whitespace is stripped.

    Args:
        path: a UTF-8 text file.

    Returns:
        The names in file order.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file holds no names, or a name appears twice (the message names them).
    """
    path = Path(path)
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    names = [line for line in lines if line and not line.startswith("#")]
    if not names:
        raise ValueError(f"{path}: no class names (one name per line expected)")
    duplicates = sorted(n for n, c in Counter(names).items() if c > 1)
    if duplicates:
        raise ValueError(f"{path}: duplicate class names {duplicates}")
    return names


def peer_class_file(dataset: str) -> Path:
    """The class file (names with synonyms) the peers evaluate a benchmark with.

    Args:
        dataset: a built-in dataset name or alias ("voc21", "voc20", "context59", "ade847", ...).

    Returns:
        The file's path in the installed package.

    Raises:
        ValueError: an unknown dataset, or "custom" (whose classes are its own class_names.txt).
    """
    key = canonical_name(dataset)
    if key not in PEER_CLASS_FILES:
        raise ValueError(f"dataset {dataset!r} has no shipped class file; give its names with --class-names-file")
    return class_names_path(PEER_CLASS_FILES[key])


def read_peer_classes(dataset: str) -> list[tuple[str, ...]]:
    """Each class's names from the benchmark's peer class file (see :func:`peer_class_file`), in label order."""
    return read_classes_file(peer_class_file(dataset))
