"""``mvpseg segment``: any images, any class names, label PNGs, overlays and a summary per image."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import UsageError, add_clip_arguments, add_inference_flags, clip_source, inference_config

__all__ = ["add_parser", "parse_class_list", "run"]


def parse_class_list(classes: str | None, classes_file: str | None) -> list[str]:
    """Class names from ``--classes "a,b,c"`` and/or ``--classes-file`` (one per line or comma-separated)."""
    from ..prompts import validate_class_names

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


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "segment", help="segment images with any list of class names",
        description="Segment images with any list of class names. For each image IMAGE writes to --out: "
                    "STEM.png (palette PNG of class indices), STEM_overlay.png (colours and a legend) and "
                    "STEM.json (each class's pixel share). Unreadable images are reported and skipped; "
                    "the exit status is then 1.",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ...)")
    parser.add_argument("--classes", help='comma-separated class names, e.g. "cat,dog,grass"')
    parser.add_argument("--classes-file", metavar="FILE", help="class names, one per line (or comma-separated)")
    parser.add_argument("--background", metavar="NAME", help="a name for everything else; becomes class 0")
    parser.add_argument("--prompts", metavar="CKPT",
                        help="learned prompts (.safetensors from mvpseg train); default: MaskCLIP's 85 templates")
    parser.add_argument("--out", default="mvpseg-out", metavar="DIR", help="output folder (default: mvpseg-out)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    add_clip_arguments(parser)
    add_inference_flags(parser)
    parser.set_defaults(run=run)


def _unique_stem(path: Path, used: set[str]) -> str:
    stem, number = path.stem, 2
    candidate = stem
    while candidate in used:
        candidate, number = f"{stem}-{number}", number + 1
    used.add(candidate)
    return candidate


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..files import atomic_write, write_text
    from ..image import ImageReadError, load_image
    from ..inference import Segmenter
    from ..viz import colorize, overlay

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
        write_text(out / f"{stem}.json", json.dumps(summary, indent=2))
    done = len(args.images) - failures
    if not args.quiet:
        print(f"segmented {done} of {len(args.images)} images into {out}", file=sys.stderr)
    return 1 if failures else 0
