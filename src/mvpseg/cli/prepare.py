"""``mvpseg prepare``: convert a dataset's official labels into the files mvpseg (and mmseg, CAT-Seg) reads."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import UsageError

__all__ = ["add_parser", "run"]

#: Each dataset's default splits: those of them that exist are converted.
_SPLITS = {"coco-stuff": ("train2017", "val2017"), "coco-object": ("train2017", "val2017"),
           "cityscapes": ("train", "val")}
_DATASETS = ("coco-stuff", "coco-object", "cityscapes", "ade847", "pc459")


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "prepare", help="convert a dataset's official labels to the files mvpseg reads",
        description="Write the label files a benchmark is read from, from its official download (docs/datasets.md). "
                    "coco-stuff: COCO-Stuff 164k's stuffthingmaps (ROOT/coco_stuff164k/annotations/<split>/<id>.png) "
                    "to <id>_labelTrainIds.png (train ids 0..170, 255 ignored), as mmsegmentation does. "
                    "coco-object: the same maps to <id>_instanceTrainIds.png by GroupViT/SCLIP's rule (the 80 things "
                    "1..80; stuff and unlabeled 255 become background 0). cityscapes: gtFine's *_gtFine_labelIds.png "
                    "to *_gtFine_labelTrainIds.png (the 19 train ids, 255 ignored). ade847: ADE20K_2021_17_01's "
                    "validation images and *_seg.png to images_detectron2/ and annotations_detectron2/validation "
                    "(as CAT-Seg). pc459: VOC2010/trainval/<id>.mat of the ids in VOC2010/pascalcontext_val.txt to "
                    "annotations_detectron2/pc459_val/<id>.tif (as CAT-Seg). What is written already is kept, so an "
                    "interrupted run can be restarted; a folder that is written whole gets its name only once complete.",
    )
    parser.add_argument("dataset", choices=_DATASETS, help="the dataset to prepare")
    parser.add_argument("root", metavar="ROOT",
                        help="the folder holding the dataset's top folder (coco_stuff164k, cityscapes, "
                             "ADE20K_2021_17_01, VOCdevkit) or that folder itself")
    parser.add_argument("--splits", metavar="LIST",
                        help="coco-stuff, coco-object, cityscapes: comma-separated label folders to convert "
                             "(default: those of train2017,val2017 or train,val that exist)")
    parser.add_argument("--workers", type=int, default=1, metavar="N", help="worker processes (default: 1)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def _default_splits(dataset: str, root: Path) -> list[str]:
    """The dataset's official splits that are there; all of them when none is (the converter names the first)."""
    top = {"cityscapes": "cityscapes"}.get(dataset, "coco_stuff164k")
    base = root / top if (root / top).is_dir() else root
    labels = base / ("gtFine" if dataset == "cityscapes" else "annotations")
    return [s for s in _SPLITS[dataset] if (labels / s).is_dir()] or list(_SPLITS[dataset])


def run(args: argparse.Namespace) -> int:
    from .. import data

    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1, not {args.workers}")
    root = Path(args.root).expanduser()
    progress = not args.quiet
    if args.dataset in _SPLITS:
        if args.splits is not None:
            splits = [part.strip() for part in args.splits.split(",") if part.strip()]
            if not splits:
                raise UsageError(f"--splits is empty: give e.g. {_SPLITS[args.dataset][1]}")
        else:
            splits = _default_splits(args.dataset, root)
        from ..data import layouts

        convert, suffix = {"coco-stuff": (data.prepare_coco_stuff, layouts.COCO_STUFF_SUFFIX),
                           "coco-object": (data.prepare_coco_object, layouts.COCO_OBJECT_SUFFIX),
                           "cityscapes": (data.prepare_cityscapes, layouts.CITYSCAPES_LABEL_SUFFIX)}[args.dataset]
        written = convert(root, splits=splits, num_workers=args.workers, progress=progress)
        print(f"wrote {written} label files (*{suffix}) for {', '.join(splits)} under {root}")
        return 0
    if args.splits is not None:
        raise UsageError(f"--splits: {args.dataset} has one split (val), prepared whole")
    if args.dataset == "ade847":
        written = data.prepare_ade847(root, num_workers=args.workers, progress=progress)
        print(f"wrote {written} validation images and labels (images_detectron2, annotations_detectron2) under {root}")
    else:
        written = data.prepare_pc459(root, num_workers=args.workers, progress=progress)
        print(f"wrote {written} labels (annotations_detectron2/pc459_val) under {root}")
    return 0
