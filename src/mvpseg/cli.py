"""The ``mvpseg`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__

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
    if args.clip_weights:
        return args.clip_weights
    return None if str(args.pretrained).lower() == "none" else args.pretrained


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    from .inference import PRECISIONS, InferenceConfig

    defaults = InferenceConfig()
    group = parser.add_argument_group("inference")
    group.add_argument("--mode", choices=("slide", "whole"), default=defaults.mode,
                       help=f"sliding windows or the whole image at once (default: {defaults.mode})")
    group.add_argument("--short-side", type=int, default=defaults.short_side,
                       help=f"resize so the short side has this length, 0 to keep the size (default: {defaults.short_side})")
    group.add_argument("--crop-size", type=int, default=defaults.crop_size,
                       help=f"sliding-window side (default: {defaults.crop_size})")
    group.add_argument("--stride", type=int, default=defaults.stride,
                       help=f"sliding-window step (default: {defaults.stride})")
    group.add_argument("--precision", choices=PRECISIONS, default=defaults.precision,
                       help="auto: fp16 autocast on CUDA, fp32 on the CPU (default: auto)")


def inference_config(args: argparse.Namespace):  # -> InferenceConfig
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
