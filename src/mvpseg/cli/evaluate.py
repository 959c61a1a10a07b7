"""``mvpseg eval``: mIoU, mIoU(S), mIoU(U), hIoU of learned prompts (or the template baseline) on a split."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import EVAL_PRESETS, STUDENT_EVAL_PRESETS
from .common import UsageError, add_clip_arguments, add_inference_flags, clip_source, inference_config

__all__ = ["add_parser", "run"]


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "eval", help="mIoU, mIoU(S), mIoU(U), hIoU on a dataset split",
        description="Evaluate learned prompts (or, without --prompts, MaskCLIP's 85-template baseline; or an "
                    "MVP-SEG+ student with --student) on a dataset split: intersection and union accumulated over "
                    "the whole split, printed as a summary and a per-class table and written to DIR/metrics.json. "
                    "Images are resized to the dataset's short side (Context 520, others 512) and segmented with "
                    "sliding 512-px windows (stride 426); context60 follows MaskCLIP+ (long side 520, whole "
                    "image). A --student is evaluated as MaskCLIP+ evaluates its students: the whole image, short "
                    "side 512 (Context: long side 520). Under torchrun the images are shared out over the processes.",
    )
    parser.add_argument("--dataset", required=True, choices=("voc", "context", "context60", "coco-stuff", "custom"),
                        help="the dataset layout and label space")
    parser.add_argument("--data-root", required=True, metavar="DIR",
                        help="voc/context: the folder holding VOCdevkit; coco-stuff: the folder holding "
                             "coco_stuff164k; custom: the dataset folder (JPEGImages, SegmentationClass, "
                             "ImageSets/Segmentation, class_names.txt)")
    parser.add_argument("--split", default="val", help="the split to evaluate (default: val)")
    parser.add_argument("--prompts", metavar="CKPT",
                        help="learned prompts (.safetensors from mvpseg train), possibly trained on another "
                             "dataset; default: MaskCLIP's 85 templates")
    parser.add_argument("--student", metavar="CKPT",
                        help="evaluate an MVP-SEG+ student (.safetensors from mvpseg transfer) instead of --prompts")
    parser.add_argument("--class-names-file", metavar="FILE",
                        help="the vocabulary given to the text tower, one name per line, one per label "
                             "index (default: the dataset's readable class names)")
    parser.add_argument("--unseen-file", metavar="FILE",
                        help="unseen class names, one per line, for mIoU(U) and hIoU "
                             "(default: the dataset's standard zero-shot split)")
    parser.add_argument("--limit", type=int, metavar="N", help="evaluate only the first N images of the split")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder for metrics.json")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_clip_arguments(parser, vit_mode=True)
    add_inference_flags(parser, presets={name: values for name, values in EVAL_PRESETS.items() if name != "custom"})
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..data import build_dataset
    from ..data.classes import canonical_name
    from ..distributed import cleanup, init_distributed, is_main_process
    from ..evaluate import evaluate, evaluation_setup, write_metrics
    from ..inference import Segmenter
    from ..metrics import format_table

    for flag, value in (("--class-names-file", args.class_names_file), ("--unseen-file", args.unseen_file)):
        if value is not None and not Path(value).is_file():
            raise UsageError(f"{flag}: file not found: {value}")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be a positive number of images, not {args.limit}")
    presets = STUDENT_EVAL_PRESETS if args.student else EVAL_PRESETS  # MaskCLIP+'s protocol for students
    config = inference_config(args, base=presets[canonical_name(args.dataset)])
    # The data first: a wrong --data-root fails in one line before CLIP is loaded.
    dataset = build_dataset(args.dataset, args.data_root, args.split, class_names_file=args.class_names_file,
                            unseen_file=args.unseen_file)
    _, _, device = init_distributed(args.device)
    try:
        segmenter = Segmenter.from_pretrained(clip=args.clip, pretrained=clip_source(args), prompts=args.prompts,
                                              student=args.student, vit_mode=args.vit_mode,
                                              device=device, config=config)
        metrics = evaluate(segmenter, dataset, limit=args.limit, progress=not args.quiet)
        if is_main_process():
            setup = evaluation_setup(segmenter, dataset, args.split, args.student or args.prompts, limit=args.limit)
            path = write_metrics(args.out, metrics, extra=setup)
            what = (f"student {args.student}" if args.student else f"prompts {args.prompts}" if args.prompts
                    else "MaskCLIP templates")
            print(f"{dataset.info.name} {args.split}: {metrics['num_images']} images, "
                  f"CLIP {segmenter.clip.name}, {what}")
            print(format_table(metrics, dataset.info.unseen_names))
            print(f"wrote {path}", file=sys.stderr)
    finally:
        cleanup()
    return 0
