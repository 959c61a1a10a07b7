"""The ``mvpseg`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__

if TYPE_CHECKING:
    from .inference import InferenceConfig

__all__ = ["main"]


class UsageError(Exception):
    """A bad argument: reported as one line, exit status 2."""


def _error(message: str) -> None:
    print(f"mvpseg: error: {message}", file=sys.stderr)


def parse_class_list(classes: str | None, classes_file: str | None) -> list[str]:
    """Class names from ``--classes "a,b,c"`` and/or ``--classes-file`` (one per line or comma-separated)."""
    from .prompts import validate_class_names

    names: list[str] = []
    if classes_file:
        path = Path(classes_file)
        if not path.is_file():
            raise UsageError(f"classes file not found: {path}")
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0]
            names.extend(part for part in line.split(",") if part.strip())
    if classes:
        names.extend(part for part in classes.split(","))
    if not names and not classes_file and classes is None:
        raise UsageError("no class names: give --classes \"cat,dog,grass\" or --classes-file FILE")
    try:
        return validate_class_names(names)
    except ValueError as error:
        raise UsageError(str(error)) from error


def add_clip_arguments(parser: argparse.ArgumentParser) -> None:
    """The CLIP options every subcommand shares."""
    group = parser.add_argument_group("CLIP")
    group.add_argument("--clip", default=None,
                       help="open_clip architecture (RN50, RN101, ViT-B-16, ... or mvpseg-tiny); "
                            "default: the prompt checkpoint's, else RN50")
    group.add_argument("--pretrained", default="openai",
                       help="open_clip pretrained tag (openai, laion2b_s34b_b88k, ...; 'mvpseg' for mvpseg-tiny's "
                            "shipped weights), or 'none' for random weights (default: openai)")
    group.add_argument("--clip-weights", metavar="PATH", default=None,
                       help="a local CLIP weights file (OpenAI .pt or open_clip .pt/.bin/.safetensors); "
                            "overrides --pretrained. Without network, download it elsewhere and pass it here, "
                            "or point the MVPSEG_CLIP_CACHE environment variable at open_clip's cache folder")
    group.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")


def clip_source(args: argparse.Namespace) -> str | None:
    """The ``pretrained`` argument of load_clip: --clip-weights, else the --pretrained tag ('none': None)."""
    if args.clip_weights:
        return args.clip_weights
    return None if str(args.pretrained).lower() == "none" else args.pretrained


def add_inference_arguments(parser: argparse.ArgumentParser, per_dataset_short_side: bool = False) -> None:
    """The inference options (InferenceConfig fields).

    Args:
        parser: the subcommand's parser.
        per_dataset_short_side: --short-side defaults to None, meaning the dataset's evaluation
            preset (mvpseg.evaluate.EVAL_SHORT_SIDE), instead of InferenceConfig's 512.
    """
    from .inference import PRECISIONS, InferenceConfig

    defaults = InferenceConfig()
    group = parser.add_argument_group("inference")
    group.add_argument("--mode", choices=("slide", "whole"), default=defaults.mode,
                       help=f"sliding windows or the whole image at once (default: {defaults.mode})")
    if per_dataset_short_side:
        group.add_argument("--short-side", type=int, default=None,
                           help="resize so the short side has this length, 0 to keep the size "
                                "(default: 520 for context, 512 for the other datasets)")
    else:
        group.add_argument("--short-side", type=int, default=defaults.short_side,
                           help=f"resize so the short side has this length, 0 to keep the size "
                                f"(default: {defaults.short_side})")
    group.add_argument("--crop-size", type=int, default=defaults.crop_size,
                       help=f"sliding-window side (default: {defaults.crop_size})")
    group.add_argument("--stride", type=int, default=defaults.stride,
                       help=f"sliding-window step (default: {defaults.stride})")
    group.add_argument("--precision", choices=PRECISIONS, default=defaults.precision,
                       help="auto: fp16 autocast on CUDA, fp32 on the CPU (default: auto)")


def inference_config(args: argparse.Namespace) -> InferenceConfig:
    """The InferenceConfig of the parsed inference options (--short-side 0: keep the size)."""
    from .inference import InferenceConfig

    return InferenceConfig(short_side=args.short_side or None, mode=args.mode, crop_size=args.crop_size,
                           stride=args.stride, precision=args.precision)


def _unique_stem(path: Path, used: set[str]) -> str:
    stem, number = path.stem, 2
    candidate = stem
    while candidate in used:
        candidate, number = f"{stem}-{number}", number + 1
    used.add(candidate)
    return candidate


def run_segment(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .checkpoint import atomic_write
    from .image import ImageReadError, load_image
    from .inference import Segmenter
    from .viz import colorize, overlay

    names = parse_class_list(args.classes, args.classes_file)
    if args.background and args.background.strip() in names:
        raise UsageError(f"background name {args.background!r} is also in the class list: give it once")
    segmenter = Segmenter.from_pretrained(clip=args.clip, pretrained=clip_source(args), prompts=args.prompts,
                                          device=args.device, config=inference_config(args))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failures, used = 0, set()
    for image_path in tqdm(args.images, desc="segment", unit="image", disable=len(args.images) < 2 or args.quiet):
        path = Path(image_path)
        try:
            array = load_image(path)
            prediction = segmenter.predict(array, names, background=args.background)
        except ImageReadError as error:
            tqdm.write(f"mvpseg: error: {error}", file=sys.stderr)
            failures += 1
            continue
        stem = _unique_stem(path, used)
        label_image = colorize(prediction.labels)
        atomic_write(out / f"{stem}.png", lambda tmp, image=label_image: image.save(tmp, format="PNG"))
        picture = overlay(array, prediction.labels, prediction.class_names)
        atomic_write(out / f"{stem}_overlay.png", lambda tmp, picture=picture: picture.save(tmp, format="PNG"))
        summary = {
            "image": str(path),
            "size": list(prediction.labels.shape),
            "class_names": prediction.class_names,
            "pixel_share": prediction.class_shares(),
        }
        if prediction.presence is not None:
            summary["presence"] = dict(zip(prediction.class_names, map(float, prediction.presence)))
        text = json.dumps(summary, indent=2)
        atomic_write(out / f"{stem}.json", lambda tmp, text=text: Path(tmp).write_text(text, encoding="utf-8"))
    done = len(args.images) - failures
    if not args.quiet:
        print(f"segmented {done} of {len(args.images)} images into {out}", file=sys.stderr)
    return 1 if failures else 0


def run_eval(args: argparse.Namespace) -> int:
    from .data import build_dataset
    from .distributed import cleanup, init_distributed, is_main_process
    from .evaluate import evaluate, evaluation_setup, inference_preset, write_metrics
    from .inference import Segmenter
    from .metrics import format_table

    for flag, value in (("--class-names-file", args.class_names_file), ("--unseen-file", args.unseen_file)):
        if value is not None and not Path(value).is_file():
            raise UsageError(f"{flag}: file not found: {value}")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be a positive number of images, not {args.limit}")
    if args.short_side is None:  # the dataset's evaluation preset: Context 520, the others 512
        args.short_side = inference_preset(args.dataset).short_side
    config = inference_config(args)
    # The data first: a wrong --data-root fails in one line before CLIP is loaded.
    dataset = build_dataset(args.dataset, args.data_root, args.split, class_names_file=args.class_names_file,
                            unseen_file=args.unseen_file)
    _, _, device = init_distributed(args.device)
    try:
        segmenter = Segmenter.from_pretrained(clip=args.clip, pretrained=clip_source(args), prompts=args.prompts,
                                              device=device, config=config)
        metrics = evaluate(segmenter, dataset, limit=args.limit, progress=not args.quiet)
        if is_main_process():
            setup = evaluation_setup(segmenter, dataset, args.split, args.prompts, limit=args.limit)
            path = write_metrics(args.out, metrics, extra=setup)
            what = f"prompts {args.prompts}" if args.prompts else "MaskCLIP templates"
            print(f"{dataset.info.name} {args.split}: {metrics['num_images']} images, "
                  f"CLIP {segmenter.clip.name}, {what}")
            print(format_table(metrics, dataset.info.unseen_names))
            print(f"wrote {path}", file=sys.stderr)
    finally:
        cleanup()
    return 0


_COCO_SPLITS = ("train2017", "val2017")


def run_prepare(args: argparse.Namespace) -> int:
    from .data import prepare_coco_stuff

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


def _add_train_parser(commands: argparse._SubParsersAction) -> None:
    from .losses import LossWeights
    from .model import MVPSegConfig
    from .train import PRESETS, TrainConfig

    defaults, model, loss = TrainConfig(), MVPSegConfig(), LossWeights()
    parser = commands.add_parser(
        "train", help="train MVP-SEG prompts on a dataset's seen classes",
        description="Train MVP-SEG prompts (K segmentation prompts + a global prompt) on a frozen CLIP with the "
                    "seen classes of a dataset. Writes OUT/prompts.safetensors (use with --prompts), "
                    "OUT/checkpoint.safetensors (for --resume), OUT/config.json, OUT/log.csv and TensorBoard logs. "
                    "Under torchrun (torchrun --nproc_per_node N -m mvpseg train ...) the global batch is split "
                    "over the processes. Defaults come from the dataset's preset; every flag overrides it.",
    )
    parser.add_argument("--dataset", required=True, help=f"{', '.join(PRESETS)} or custom (VOC-like layout with "
                                                         "class_names.txt and unseen.txt)")
    parser.add_argument("--data-root", required=True, metavar="DIR", help="the dataset folder")
    parser.add_argument("--split", default=defaults.split, help=f"training split (default: {defaults.split})")
    parser.add_argument("--class-names-file", metavar="FILE", help="replace the dataset's class names")
    parser.add_argument("--unseen-file", metavar="FILE", help="replace the unseen split (names, one per line)")
    parser.add_argument("--out", default=defaults.out, metavar="DIR", help=f"run folder (default: {defaults.out})")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors")
    parser.add_argument("--transductive", action="store_true",
                        help="show unseen class names too (their pixels stay unlabelled); default inductive")
    method = parser.add_argument_group("method (each piece switchable for the paper's ablations)")
    method.add_argument("--num-prompts", type=int, default=model.num_prompts, help=f"K (default: {model.num_prompts})")
    method.add_argument("--num-context", type=int, default=model.num_context,
                        help=f"M context vectors per prompt (default: {model.num_context})")
    method.add_argument("--init-text", default=None, help='initialise every prompt from a phrase, e.g. "a photo of a"')
    method.add_argument("--no-gpr", action="store_true", help="turn Global Prompt Refining off")
    method.add_argument("--gpr-gamma", type=float, default=model.gpr_gamma, help=f"GPR pooling sharpness (default: {model.gpr_gamma})")
    method.add_argument("--no-gpr-bias", action="store_true", help="the paper's GPR formula without a learned offset")
    method.add_argument("--seg-weight", type=float, default=loss.seg, help=f"weight of L_seg (default: {loss.seg})")
    method.add_argument("--cls-weight", type=float, default=loss.cls, help=f"weight of L_cls (default: {loss.cls})")
    method.add_argument("--oc-weight", type=float, default=loss.oc, help=f"weight of L_OC, 0 turns it off (default: {loss.oc})")
    method.add_argument("--vit-mode", default=model.vit_mode, help=f"last ViT block for dense features (default: {model.vit_mode})")
    optim = parser.add_argument_group("optimisation (defaults: the dataset's preset)")
    optim.add_argument("--iters", type=int, help="training steps")
    optim.add_argument("--batch-size", type=int, help=f"global batch size (default: {defaults.batch_size})")
    optim.add_argument("--lr", type=float, help=f"learning rate (default: {defaults.lr})")
    optim.add_argument("--optimizer", choices=("sgd", "adamw"), help=f"(default: {defaults.optimizer})")
    optim.add_argument("--schedule", choices=("cosine", "poly", "constant"), help=f"(default: {defaults.schedule})")
    optim.add_argument("--warmup-iters", type=int, help=f"(default: {defaults.warmup_iters})")
    optim.add_argument("--crop-size", type=int, help="training crop side (default: the preset's)")
    optim.add_argument("--seed", type=int, help=f"(default: {defaults.seed})")
    optim.add_argument("--num-workers", type=int, help=f"data-loading processes (default: {defaults.num_workers})")
    optim.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"),
                       help="auto: bf16/fp16 autocast on CUDA, fp32 on the CPU")
    optim.add_argument("--checkpoint-every", type=int, help=f"(default: {defaults.checkpoint_every})")
    optim.add_argument("--log-every", type=int, help=f"(default: {defaults.log_every})")
    optim.add_argument("--feature-cache", metavar="DIR",
                       help="train from cached dense features of augmented views (CLIP is frozen): built once "
                            "in DIR, reused by runs with the same data, CLIP, augmentation and seed")
    optim.add_argument("--cache-views", type=int,
                       help=f"augmented views per image in the cache; epoch e uses view e mod V (default: {defaults.cache_views})")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_clip_arguments(parser)
    parser.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> int:
    from .losses import LossWeights
    from .model import MVPSegConfig
    from .train import preset, train

    clip = args.clip or "RN50"
    overrides = {key: getattr(args, key) for key in (
        "iters", "batch_size", "lr", "optimizer", "schedule", "warmup_iters", "crop_size", "seed", "num_workers",
        "precision", "checkpoint_every", "log_every", "feature_cache", "cache_views") if getattr(args, key) is not None}
    config = preset(
        args.dataset, data_root=args.data_root, split=args.split, class_names_file=args.class_names_file,
        unseen_file=args.unseen_file, clip=clip, pretrained=clip_source(args), out=args.out,
        transductive=args.transductive, device=args.device,
        model=MVPSegConfig(clip_name=clip, num_prompts=args.num_prompts, num_context=args.num_context,
                           init_text=args.init_text, use_gpr=not args.no_gpr, gpr_gamma=args.gpr_gamma,
                           gpr_bias=not args.no_gpr_bias, vit_mode=args.vit_mode),
        loss=LossWeights(seg=args.seg_weight, cls=args.cls_weight, oc=args.oc_weight),
        **overrides,
    )
    from .distributed import cleanup, is_main_process

    try:
        path = train(config, resume=args.resume, progress=not args.quiet)
        if is_main_process() and not args.quiet:
            print(f"prompts written to {path}", file=sys.stderr)
    finally:
        cleanup()
    return 0


def _add_demo_parser(commands: argparse._SubParsersAction) -> None:
    from .world.demo import DemoConfig

    defaults = DemoConfig()
    parser = commands.add_parser(
        "demo", help="the whole method offline on a synthetic world, in minutes on a CPU",
        description="Generate the synthetic world, train prompts on its seen classes with the tiny CLIP shipped "
                    "in mvpseg, evaluate zero-shot on its val split and print the ablation table (MaskCLIP "
                    "templates, 1 prompt, K prompts, + OCLoss, + GPR = MVP-SEG) with mIoU(S), mIoU(U), hIoU. "
                    "Writes OUT/results.md, OUT/results.json, overlays and per-prompt maps. No network needed.",
    )
    parser.add_argument("--out", default=defaults.out, metavar="DIR", help=f"output folder (default: {defaults.out})")
    parser.add_argument("--seed", type=int, default=defaults.seed, help=f"(default: {defaults.seed})")
    parser.add_argument("--num-train", type=int, default=defaults.num_train,
                        help=f"world training images (default: {defaults.num_train})")
    parser.add_argument("--num-val", type=int, default=defaults.num_val,
                        help=f"world validation images (default: {defaults.num_val})")
    parser.add_argument("--iters", type=int, default=defaults.iters,
                        help=f"training steps per learned row (default: {defaults.iters})")
    parser.add_argument("--num-prompts", type=int, default=defaults.num_prompts, help=f"K (default: {defaults.num_prompts})")
    parser.add_argument("--seeds", type=int, default=defaults.seeds,
                        help=f"prompt-training seeds per learned row, averaged (default: {defaults.seeds})")
    parser.add_argument("--clip-weights", default=defaults.clip_weights, metavar="PATH",
                        help="tiny CLIP weights (default: the ones shipped in the package)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.set_defaults(run=run_demo_command)


def run_demo_command(args: argparse.Namespace) -> int:
    import torch

    from .world.demo import DemoConfig, format_results, run_demo

    if args.threads:
        torch.set_num_threads(args.threads)
    config = DemoConfig(out=args.out, seed=args.seed, num_train=args.num_train, num_val=args.num_val,
                        iters=args.iters, num_prompts=args.num_prompts, seeds=args.seeds,
                        clip_weights=args.clip_weights)
    rows = run_demo(config, progress=not args.quiet)
    print(format_results(rows))
    print(f"results in {Path(args.out) / 'results.md'}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mvpseg",
        description="MVP-SEG: open-vocabulary semantic segmentation with multi-view prompts on a frozen CLIP.",
    )
    parser.add_argument("--version", action="version", version=f"mvpseg {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    segment = commands.add_parser(
        "segment", help="segment images with any list of class names",
        description="Segment images with any list of class names. For each image IMAGE writes to --out: "
                    "STEM.png (palette PNG of class indices), STEM_overlay.png (colours and a legend) and "
                    "STEM.json (each class's pixel share). Unreadable images are reported and skipped; "
                    "the exit status is then 1.",
    )
    segment.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ...)")
    segment.add_argument("--classes", help='comma-separated class names, e.g. "cat,dog,grass"')
    segment.add_argument("--classes-file", metavar="FILE", help="class names, one per line (or comma-separated)")
    segment.add_argument("--background", metavar="NAME", help="a name for everything else; becomes class 0")
    segment.add_argument("--prompts", metavar="CKPT",
                         help="learned prompts (.safetensors from mvpseg train); default: MaskCLIP's 85 templates")
    segment.add_argument("--out", default="mvpseg-out", metavar="DIR", help="output folder (default: mvpseg-out)")
    segment.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    add_clip_arguments(segment)
    add_inference_arguments(segment)
    segment.set_defaults(run=run_segment)

    evaluation = commands.add_parser(
        "eval", help="mIoU, mIoU(S), mIoU(U), hIoU on a dataset split",
        description="Evaluate learned prompts (or, without --prompts, MaskCLIP's 85-template baseline) on a "
                    "dataset split: intersection and union accumulated over the whole split, printed as a "
                    "summary and a per-class table and written to DIR/metrics.json. Images are resized to "
                    "the dataset's short side (Context 520, others 512) and segmented with sliding 512-px "
                    "windows (stride 426). Under torchrun the images are shared out over the processes.",
    )
    evaluation.add_argument("--dataset", required=True, choices=("voc", "context", "coco-stuff", "custom"),
                            help="the dataset layout and label space")
    evaluation.add_argument("--data-root", required=True, metavar="DIR",
                            help="voc/context: the folder holding VOCdevkit; coco-stuff: the folder holding "
                                 "coco_stuff164k; custom: the dataset folder (JPEGImages, SegmentationClass, "
                                 "ImageSets/Segmentation, class_names.txt)")
    evaluation.add_argument("--split", default="val", help="the split to evaluate (default: val)")
    evaluation.add_argument("--prompts", metavar="CKPT",
                            help="learned prompts (.safetensors from mvpseg train), possibly trained on another "
                                 "dataset; default: MaskCLIP's 85 templates")
    evaluation.add_argument("--class-names-file", metavar="FILE",
                            help="the vocabulary given to the text tower, one name per line, one per label "
                                 "index (default: the dataset's readable class names)")
    evaluation.add_argument("--unseen-file", metavar="FILE",
                            help="unseen class names, one per line, for mIoU(U) and hIoU "
                                 "(default: the dataset's standard zero-shot split)")
    evaluation.add_argument("--limit", type=int, metavar="N", help="evaluate only the first N images of the split")
    evaluation.add_argument("--out", required=True, metavar="DIR", help="output folder for metrics.json")
    evaluation.add_argument("--quiet", action="store_true", help="no progress bar")
    add_clip_arguments(evaluation)
    add_inference_arguments(evaluation, per_dataset_short_side=True)
    evaluation.set_defaults(run=run_eval)

    prepare = commands.add_parser(
        "prepare", help="convert a dataset's official labels to the files mvpseg reads",
        description="Convert the official COCO-Stuff 164k stuffthingmaps (ROOT/coco_stuff164k/annotations/"
                    "<split>/<id>.png) into <id>_labelTrainIds.png (train ids 0..170, 255 ignored), as "
                    "mmsegmentation does. Files already converted are skipped, so an interrupted run can "
                    "be restarted.",
    )
    prepare.add_argument("dataset", choices=("coco-stuff",), help="the dataset to prepare")
    prepare.add_argument("root", metavar="ROOT", help="the folder holding coco_stuff164k, or coco_stuff164k itself")
    prepare.add_argument("--splits", metavar="LIST",
                         help="comma-separated annotation folders to convert (default: those of train2017, "
                              "val2017 that exist)")
    prepare.add_argument("--workers", type=int, default=1, metavar="N", help="worker processes (default: 1)")
    prepare.add_argument("--quiet", action="store_true", help="no progress bar")
    prepare.set_defaults(run=run_prepare)

    _add_train_parser(commands)
    _add_demo_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mvpseg`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is None:
        parser.print_help()
        return 2
    from .checkpoint import CheckpointError
    from .clip import ClipWeightsUnavailable

    try:
        return int(args.run(args))
    except ClipWeightsUnavailable as error:
        _error(str(error))
        return 1
    except (UsageError, CheckpointError, ValueError) as error:
        _error(str(error))
        return 2
    except KeyboardInterrupt:
        _error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
