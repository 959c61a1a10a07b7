"""``mvpseg transfer`` (MVP-SEG+: the prompts teach a student network) and ``mvpseg pseudo-label``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import EVAL_PRESETS, STUDENT_PRESETS, TRANSFER_PRESETS, TransferConfig, to_dict
from .common import (
    RENAME,
    UsageError,
    add_clip_arguments,
    add_inference_flags,
    add_run_flags,
    clip_source,
    inference_config,
    launch,
    run_config,
)

__all__ = ["add_parser", "run_pseudo_label", "run_transfer"]


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "transfer", help="MVP-SEG+: learned prompts teach a DeepLab student (pseudo-labels, then self-training)",
        description="Train an MVP-SEG+ student (DeepLabv2 or DeepLabv3+) on a dataset, transductively: seen pixels "
                    "keep their ground truth, unseen pixels get the teacher's best unseen class (the prompts of "
                    "--prompts on their frozen CLIP, run on each crop, or labels written by mvpseg pseudo-label), "
                    "and from --self-train-from on the student's own. Writes OUT/student.safetensors (use with "
                    "--student), OUT/checkpoint.safetensors (for --resume), OUT/config.json (for --config) and "
                    "OUT/log.csv. Settings come from the dataset's preset (MaskCLIP+'s schedules) or --config, "
                    "then from the flags given; torchrun splits the global batch over processes.",
    )
    add_run_flags(parser, TransferConfig, TRANSFER_PRESETS, rename=RENAME,
                  titles={"student": "the student network"})
    parser.add_argument("--student-preset", choices=tuple(STUDENT_PRESETS), metavar="NAME",
                        help=f"a named student network ({', '.join(STUDENT_PRESETS)}; fast: DeepLabv2 on ResNet-50 at "
                             f"output stride 16), laid over the dataset's preset; the student flags given still win")
    parser.set_defaults(run=run_transfer)

    labels = commands.add_parser(
        "pseudo-label", help="write the teacher's labels for a training set once (for mvpseg transfer)",
        description="Label a dataset split with MVP-SEG's prompts for MVP-SEG+: seen pixels keep their ground "
                    "truth, unseen pixels get the teacher's best unseen class, at the dataset's evaluation scale. "
                    "Writes OUT/<id>.png (palette PNGs of class indices, 255 void) and OUT/meta.json; pass OUT to "
                    "mvpseg transfer --pseudo-labels. Under torchrun each process labels every N-th image.",
    )
    labels.add_argument("--dataset", required=True, help="voc, context, coco-stuff or custom")
    labels.add_argument("--data-root", required=True, metavar="DIR", help="the dataset folder")
    labels.add_argument("--split", default="train", help="the split to label (default: train)")
    labels.add_argument("--class-names-file", metavar="FILE", help="replace the dataset's class names")
    labels.add_argument("--unseen-file", metavar="FILE", help="replace the unseen split (names, one per line)")
    labels.add_argument("--prompts", required=True, metavar="CKPT", help="the teacher: a prompt checkpoint")
    labels.add_argument("--out", required=True, metavar="DIR", help="folder of the label maps")
    labels.add_argument("--teacher-gpr", action="store_true", help="rank unseen classes by the final map with GPR")
    labels.add_argument("--label-void", action="store_true", help="also label void pixels (off: MaskCLIP+'s rule)")
    labels.add_argument("--unseen-min-probability", type=float, default=0.0,
                        help="mvpseg's option: leave unseen pixels unlabelled whose probability among the unseen "
                             "classes is below this (default: 0, off, as MaskCLIP+)")
    labels.add_argument("--quiet", action="store_true", help="no progress bar")
    add_clip_arguments(labels)
    add_inference_flags(labels, presets={name: values for name, values in EVAL_PRESETS.items() if name != "custom"})
    labels.set_defaults(run=run_pseudo_label)


def with_student_preset(config: TransferConfig, args: argparse.Namespace) -> TransferConfig:
    """``config`` with the --student-preset's fields, under the student flags given on the command line."""
    if not args.student_preset:
        return config
    from dataclasses import replace

    from .flags import apply_overrides, overrides

    given = {key[len("student."):]: value for key, value in overrides(args).items() if key.startswith("student.")}
    student = replace(config.student, **STUDENT_PRESETS[args.student_preset])
    return replace(config, student=apply_overrides(student, given))


def run_transfer(args: argparse.Namespace) -> int:
    config = run_config(args, TransferConfig, TRANSFER_PRESETS)
    config = with_student_preset(config, args)
    if not config.prompts:
        raise UsageError("give --prompts CKPT: the prompt checkpoint (from mvpseg train) that teaches the student")
    from ..transfer import transfer

    return launch(transfer, config, args, "student")


def run_pseudo_label(args: argparse.Namespace) -> int:
    from ..data import build_dataset
    from ..data.classes import canonical_name
    from ..distributed import cleanup, init_distributed, is_main_process
    from ..inference import Segmenter
    from ..transfer import write_pseudo_labels
    from ..transfer.pseudo import prompts_fingerprint

    if not 0 <= args.unseen_min_probability < 1:
        raise UsageError(f"--unseen-min-probability must be in [0, 1), not {args.unseen_min_probability}")
    preset = EVAL_PRESETS.get(canonical_name(args.dataset), EVAL_PRESETS["custom"])
    dataset = build_dataset(args.dataset, args.data_root, args.split, class_names_file=args.class_names_file,
                            unseen_file=args.unseen_file)
    _, _, device = init_distributed(args.device)
    try:
        segmenter = Segmenter.from_pretrained(clip=args.clip, pretrained=clip_source(args), prompts=args.prompts,
                                              device=device, config=inference_config(args, base=preset))
        clip = segmenter.clip
        assert clip is not None  # a prompt checkpoint's model always holds its CLIP
        teacher = {"prompts": Path(args.prompts).name, "clip": clip.name,
                   "fingerprint": clip.fingerprint, "inference": to_dict(segmenter.config),
                   "prompts_sha256": prompts_fingerprint(args.prompts)}
        write_pseudo_labels(segmenter, dataset, args.out, use_gpr=args.teacher_gpr, label_void=args.label_void,
                            confidence=args.unseen_min_probability, progress=not args.quiet, teacher=teacher)
        if is_main_process() and not args.quiet:
            print(f"wrote pseudo-labels of {len(dataset)} images to {args.out}", file=sys.stderr)
    finally:
        cleanup()
    return 0
