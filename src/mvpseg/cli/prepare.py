"""``mvpseg prepare``: convert a dataset's official labels into the files mvpseg reads."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import UsageError

__all__ = ["add_parser", "run"]

_COCO_SPLITS = ("train2017", "val2017")


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "prepare", help="convert a dataset's official labels to the files mvpseg reads",
        description="Convert the official COCO-Stuff 164k stuffthingmaps (ROOT/coco_stuff164k/annotations/"
                    "<split>/<id>.png) into <id>_labelTrainIds.png (train ids 0..170, 255 ignored), as "
                    "mmsegmentation does. Files already converted are skipped, so an interrupted run can "
                    "be restarted.",
    )
    parser.add_argument("dataset", choices=("coco-stuff",), help="the dataset to prepare")
    parser.add_argument("root", metavar="ROOT", help="the folder holding coco_stuff164k, or coco_stuff164k itself")
    parser.add_argument("--splits", metavar="LIST",
                        help="comma-separated annotation folders to convert (default: those of train2017, "
                             "val2017 that exist)")
    parser.add_argument("--workers", type=int, default=1, metavar="N", help="worker processes (default: 1)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..data import prepare_coco_stuff

    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1, not {args.workers}")
    root = Path(args.root).expanduser()
    if args.splits is not None:
        splits = [part.strip() for part in args.splits.split(",") if part.strip()]
        if not splits:
            raise UsageError("--splits is empty: give e.g. val2017 or train2017,val2017")
    else:  # every official split that is there; when none is, prepare_coco_stuff names the first missing
        base = root / "coco_stuff164k" if (root / "coco_stuff164k").is_dir() else root
        splits = [s for s in _COCO_SPLITS if (base / "annotations" / s).is_dir()] or list(_COCO_SPLITS)
    written = prepare_coco_stuff(root, splits=splits, num_workers=args.workers, progress=not args.quiet)
    print(f"wrote {written} label files (*_labelTrainIds.png) for {', '.join(splits)} under {root}")
    return 0
