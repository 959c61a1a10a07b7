"""``mvpseg eval``: mIoU, mIoU(S), mIoU(U), hIoU of learned prompts (or the template baseline) on a split."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import EVAL_PRESETS, STUDENT_EVAL_PRESETS
from .common import (
    UsageError,
    add_inference_flags,
    add_model_flags,
    inference_config,
    model_source,
    protocol_line,
    protocol_of,
)

__all__ = ["DATASET_CHOICES", "add_parser", "run"]

#: The --dataset names: the built-in benchmarks, the zero-shot protocol's names and their benchmark aliases.
DATASET_CHOICES = ("voc", "voc20", "voc21", "context", "context59", "context60", "coco-stuff", "coco-object",
                   "cityscapes", "ade20k", "ade847", "pc459", "custom")


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "eval", help="mIoU, mIoU(S), mIoU(U), hIoU on a dataset split",
        description="Evaluate learned prompts (or, without --prompts, MaskCLIP's 85-template baseline; or an "
                    "MVP-SEG+ student with --student) on a dataset split: intersection and union accumulated over "
                    "the whole split, printed as a summary and a per-class table and written to DIR/metrics.json. "
                    "Images are resized to the dataset's short side (Context 520, others 512) and segmented with "
                    "sliding 512-px windows (stride 426); context60 follows MaskCLIP+ (long side 520, whole "
                    "image). A --student is evaluated as MaskCLIP+ evaluates its students: the whole image, short "
                    "side 512 (Context: long side 520). Under torchrun the images are shared out over the processes. "
                    "The other benchmarks (voc21, coco-object, cityscapes, ade20k, ade847, pc459) take the custom "
                    "preset; their layouts, label rules and prepare commands: docs/datasets.md.",
    )
    parser.add_argument("--dataset", required=True, choices=DATASET_CHOICES,
                        help="the dataset layout and label space (voc20 = voc, context59 = context: background "
                             "ignored; voc21, context60, coco-object: background is class 0)")
    parser.add_argument("--data-root", required=True, metavar="DIR",
                        help="the folder holding the dataset's top folder or that folder itself: VOCdevkit (voc, "
                             "voc21, context, context60, pc459), coco_stuff164k (coco-stuff, coco-object), cityscapes, "
                             "ADEChallengeData2016 (ade20k), ADE20K_2021_17_01 (ade847); custom: the dataset folder "
                             "(JPEGImages, SegmentationClass, ImageSets/Segmentation, class_names.txt)")
    parser.add_argument("--split", default="val", help="the split to evaluate (default: val)")
    parser.add_argument("--class-names-file", metavar="FILE",
                        help="the vocabulary given to the text tower, one class per line, one per label "
                             "index, a class's synonyms after commas (SCLIP's cls_*.txt files load as they are; "
                             "default: the dataset's readable class names)")
    parser.add_argument("--peer-class-names", action="store_true",
                        help="give the text tower the class names with synonyms the peers evaluate the benchmark "
                             "with (SCLIP's cls_*.txt; CAT-Seg's ade847/pc459 lists), shipped with mvpseg; the "
                             "metrics keep the dataset's class names")
    parser.add_argument("--unseen-file", metavar="FILE",
                        help="unseen class names, one per line, for mIoU(U) and hIoU "
                             "(default: the dataset's standard zero-shot split)")
    parser.add_argument("--limit", type=int, metavar="N", help="evaluate only the first N images of the split")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder for metrics.json")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_flags(parser, skip=("onnx",))
    add_inference_flags(parser, presets={name: values for name, values in EVAL_PRESETS.items() if name != "custom"},
                        protocol_benchmark=" (default: --dataset's); its class file too unless --class-names-file "
                                           "is given")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..data import build_dataset, peer_class_file
    from ..data.classes import class_names_path
    from ..distributed import cleanup, init_distributed, is_main_process
    from ..evaluate import dataset_preset, evaluate, evaluation_setup, write_metrics
    from ..inference import Segmenter
    from ..metrics import format_table

    for flag, value in (("--class-names-file", args.class_names_file), ("--unseen-file", args.unseen_file)):
        if value is not None and not Path(value).is_file() and not (flag == "--unseen-file" and value == "none"):
            raise UsageError(f"{flag}: file not found: {value}")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be a positive number of images, not {args.limit}")
    if args.peer_class_names and args.class_names_file is not None:
        raise UsageError("give --peer-class-names or --class-names-file, not both")
    if args.peer_class_names and args.dataset == "custom":
        raise UsageError("--peer-class-names: a custom dataset has no peers' class file; give --class-names-file")
    protocol = protocol_of(args, args.dataset)
    source = model_source(args, protocol)
    presets = STUDENT_EVAL_PRESETS if source.student else EVAL_PRESETS  # MaskCLIP+'s protocol for students
    base = protocol.inference if protocol is not None else dataset_preset(presets, args.dataset)
    config = inference_config(args, base=base)
    prompt_names = peer_class_file(args.dataset) if args.peer_class_names else None
    if protocol is not None and protocol.class_file and args.class_names_file is None and prompt_names is None:
        prompt_names = class_names_path(protocol.class_file)
    # The data first: a wrong --data-root fails in one line before CLIP is loaded.
    dataset = build_dataset(args.dataset, args.data_root, args.split, class_names_file=args.class_names_file,
                            unseen_file=args.unseen_file, prompt_names_file=prompt_names)
    _, _, device = init_distributed(args.device)
    try:
        segmenter = Segmenter.from_source(source, device=device, config=config)
        metrics = evaluate(segmenter, dataset, limit=args.limit, progress=not args.quiet)
        if is_main_process():
            setup = evaluation_setup(segmenter, dataset, args.split, source.student or source.prompts,
                                     limit=args.limit)
            setup["protocol"] = protocol.record() if protocol is not None else None
            setup["vit_mode"] = source.vit_mode
            path = write_metrics(args.out, metrics, extra=setup)
            what = (f"student {source.student}" if source.student else f"prompts {source.prompts}"
                    if source.prompts else "MaskCLIP templates")
            print(f"{dataset.info.name} {args.split}: {metrics['num_images']} images, "
                  f"CLIP {segmenter.clip.name if segmenter.clip is not None else '(none)'}, {what}")
            print(protocol_line(protocol, segmenter.config))
            print(format_table(metrics, dataset.info.unseen_names))
            print(dataset.describe(), file=sys.stderr)  # the size check: is this the official split?
            print(f"wrote {path}", file=sys.stderr)
    finally:
        cleanup()
    return 0
