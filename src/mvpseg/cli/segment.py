"""``mvpseg segment``: any images, any class names, label PNGs, overlays and a summary per image."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ..inputs import ImageInputs, collect_images, parse_shard, read_input_list, shard
from ..vocabulary import Vocabulary, parse_classes, read_classes_file
from .common import (
    UsageError,
    add_inference_flags,
    add_model_flags,
    inference_overrides,
    load_segmenter,
    model_source,
    protocol_of,
)

__all__ = ["add_parser", "parse_class_list", "parse_vocabulary", "run"]


def parse_class_list(classes: str | None, classes_file: str | None) -> list[tuple[str, ...]]:
    """Classes from ``--classes`` and/or ``--classes-file``, each as its names (display name first).

    ``--classes "tv monitor|television,cat"``: commas separate classes, ``|`` a class's names. A file
    holds one class per line, its names separated by commas (SCLIP's ``cls_*.txt``) or ``|``; a file of
    a single line reads like ``--classes`` (see :mod:`mvpseg.vocabulary`).

    Args:
        classes: the ``--classes`` text, or None.
        classes_file: the ``--classes-file`` path, or None.

    Returns:
        The validated classes, the file's first.

    Raises:
        UsageError: no classes given, a missing file, or a bad vocabulary (one line naming it).
    """
    entries: list[tuple[str, ...]] = []
    if classes_file:
        path = Path(classes_file)
        if not path.is_file():
            raise UsageError(f"classes file not found: {path}")
        entries += read_classes_file(path)
    if classes is not None:
        entries += parse_classes(classes)
    if not entries and not classes_file and classes is None:
        raise UsageError("no class names: give --classes \"cat,dog,grass\" or --classes-file FILE")
    try:
        return list(Vocabulary.of(entries, warn=False).classes)  # segmenting warns about shared names
    except ValueError as error:
        raise UsageError(str(error)) from error


def parse_vocabulary(args: argparse.Namespace) -> tuple[list[tuple[str, ...]], tuple[str, ...] | None]:
    """The classes of ``--classes``/``--classes-file`` and the ``--background`` class (``a|b``: its names).

    Returns:
        (classes, background or None), validated together (the background is class 0).

    Raises:
        UsageError: as :func:`parse_class_list`, or a background of several classes or shown twice.
    """
    classes = parse_class_list(args.classes, args.classes_file)
    background = None
    if args.background is not None and args.background.strip():
        parsed = parse_classes(args.background)
        if len(parsed) != 1:
            raise UsageError(f"--background takes one class, not {args.background!r}: separate its names with |")
        background = parsed[0]
    try:
        Vocabulary.of(classes, background, warn=False)
    except ValueError as error:
        raise UsageError(f"{error} (--background is class 0)") from error
    return classes, background


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "segment", help="segment images with any list of class names",
        description="Segment images with any list of class names. For each image IMAGE writes to --out: "
                    "STEM.png (palette PNG of class indices), STEM_overlay.png (colours and a legend) and "
                    "STEM.json (each class's pixel share). Unreadable images are reported and skipped; "
                    "the exit status is then 1.",
    )
    parser.add_argument("images", nargs="*", metavar="IMAGE",
                        help="image files (JPEG, PNG, ...), folders of images, or quoted patterns such as "
                             "'photos/*.jpg' or 'photos/**/*.png'")
    parser.add_argument("--recursive", action="store_true", help="take the images in folders' subfolders too")
    parser.add_argument("--input-list", action="append", metavar="FILE",
                        help="a file of image paths, one per line, taken after the IMAGE arguments; - reads "
                             "standard input (e.g. find photos -name '*.jpg' | mvpseg segment --input-list - ...)")
    parser.add_argument("--shard", metavar="I/N",
                        help="segment shard I of N (I from 0): images I, I+N, I+2N, ... of the whole list, under "
                             "the names the whole run gives them, so that N jobs write exactly its outputs")
    parser.add_argument("--skip-existing", action="store_true",
                        help="skip an image whose three outputs are already in --out, whole, made the same way: "
                             "the same image, model, classes (synonyms included), background, threshold and "
                             "inference settings (a killed run, started again with it, continues where it stopped); "
                             "outputs made differently are made again")
    parser.add_argument("--refuse-different", action="store_true",
                        help="with --skip-existing: stop with one line at an image whose outputs were made "
                             "differently, instead of making them again")
    parser.add_argument("--classes", help='comma-separated classes, a class\'s synonyms separated by |, e.g. '
                                          '"cat,tv monitor|television,grass" (the first name is shown)')
    parser.add_argument("--classes-file", metavar="FILE",
                        help="one class per line, its synonyms separated by commas (SCLIP's class files); "
                             "a file of one line reads like --classes. With --classes too: the file's classes "
                             "then --classes' (a class in both is an error)")
    parser.add_argument("--background", metavar="NAME",
                        help="a name for everything else (synonyms separated by |); becomes class 0")
    parser.add_argument("--background-threshold", type=float, metavar="P",
                        help="pixels whose best class score is below P (0-1) become --background")
    parser.add_argument("--peer-timeout", type=float, default=10.0, metavar="S",
                        help="under torchrun: a process silent for S seconds is taken as dead and the others stop "
                             "(default: 10; a process gets 120 s, or 12 S if longer, for its first sign of life)")
    parser.add_argument("--out", default="mvpseg-out", metavar="DIR", help="output folder (default: mvpseg-out)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary line")
    parser.add_argument("--max-pixels", type=int, metavar="N",
                        help="read images of up to N pixels (width x height); default: Pillow's guard against "
                             "decompression bombs, about 179 million. Raise it only for large images you trust")
    add_model_flags(parser)
    add_inference_flags(parser, protocol_benchmark=" (default: each setting as most of its benchmarks have it)")
    parser.set_defaults(run=run)


def check_background_threshold(threshold: float | None, background: str | None) -> None:
    """Refuse ``--background-threshold`` outside [0, 1] or without ``--background`` (one line, exit 2)."""
    from ..vocabulary import background_threshold_problem

    problem = background_threshold_problem(threshold, background)
    if problem:
        raise UsageError(f"--background-threshold: {problem}")


def _report_inputs(inputs: ImageInputs, quiet: bool) -> None:
    """Arguments that gave no image (errors), and how many non-image files folders and patterns held."""
    for problem in inputs.problems:
        print(f"mvpseg: error: {problem}", file=sys.stderr)
    if inputs.skipped and not quiet:
        what = "file that is not an image" if inputs.skipped == 1 else "files that are not images"
        print(f"mvpseg: skipped {inputs.skipped} {what}", file=sys.stderr)


def _images(args: argparse.Namespace) -> ImageInputs:
    """The images of the IMAGE arguments and the --input-list files (one line per bad list, exit 2)."""
    listed: list[str] = []
    if "-" in (args.input_list or []) and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError("--input-list - cannot be read under torchrun: every process would read the one standard "
                         "input and get another part of it; write the list to a file and give --input-list FILE")
    for source in args.input_list or []:
        try:
            listed += read_input_list(source)
        except (OSError, UnicodeDecodeError) as error:
            reason = getattr(error, "strerror", None) or "not a text file"
            raise UsageError(f"--input-list {source}: cannot read it ({reason}): give a text file of image "
                             f"paths, one per line") from error
    if not args.images and not listed:
        raise UsageError("no images: give IMAGE files, folders or patterns, or --input-list FILE"
                         if not args.input_list else "the --input-list holds no path: one image path per line")
    return collect_images(args.images, recursive=args.recursive, listed=listed)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .. import distributed
    from ..image import ImageReadError, load_image
    from ..outputs import output_state, run_record, write_outputs

    classes, background = parse_vocabulary(args)
    check_background_threshold(args.background_threshold, args.background)
    protocol = protocol_of(args)
    source = model_source(args, protocol)
    if args.refuse_different and not args.skip_existing:
        raise UsageError("--refuse-different goes with --skip-existing: it says what to do with outputs made differently")
    if args.peer_timeout <= 1.0:
        raise UsageError(f"--peer-timeout is a number of seconds above 1, not {args.peer_timeout}")
    if args.max_pixels is not None and args.max_pixels < 1:
        raise UsageError(f"--max-pixels must be a positive number of pixels, not {args.max_pixels}")
    try:
        shard_index, shard_count = parse_shard(args.shard) if args.shard else (0, 1)
    except ValueError as error:
        raise UsageError(str(error)) from error
    inputs = _images(args)
    if not inputs.images:
        _report_inputs(inputs, args.quiet)
        return 1
    class_names = Vocabulary.of(classes, background, warn=False).display_names
    # Under torchrun every process lists the same inputs and takes its share (rank r of W: r, r + W, ...).
    ours = not distributed.is_distributed()  # a process group of the caller's is left as it is
    rank, world_size, device = distributed.init_distributed(args.device)
    # A failed process stops the others within seconds; a late first beat is not a failure.
    watch = distributed.PeerWatch(dead_after_s=args.peer_timeout, startup_s=max(120.0, 12 * args.peer_timeout))
    try:
        segmenter = load_segmenter(source, device, inference_overrides(args, protocol))
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        if rank == 0:
            _report_inputs(inputs, args.quiet)
        ours_in_shard = shard(inputs.images, shard_index, shard_count)  # names stay those of the whole list
        mine = shard(ours_in_shard, rank, world_size)
        made_with = run_record(segmenter, classes, background, args.background_threshold)
        done = skipped = redone = failures = 0
        start = time.perf_counter()
        bar = tqdm(total=len(mine), desc="segment", unit="image", disable=len(mine) < 2 or args.quiet or rank > 0)
        for item in mine:
            watch.check()
            bar.update()
            if args.skip_existing:
                state, reason = output_state(out, item.name, item.path, class_names, made_with)
                if state == "done":
                    skipped += 1
                    continue
                if state == "different":
                    if args.refuse_different:
                        raise UsageError(f"{out / item.name}.json was made differently ({reason}): start the "
                                         f"command that made it, or leave out --refuse-different to make it again")
                    redone += 1
            try:
                array = load_image(item.path, max_pixels=args.max_pixels)
                prediction = segmenter.predict(array, classes, background=background,
                                               background_threshold=args.background_threshold)
            except ImageReadError as error:
                tqdm.write(f"mvpseg: error: {error}", file=sys.stderr)
                failures += 1
                continue
            write_outputs(out, item.name, item.path, array, prediction, made_with)
            done += 1
        bar.close()
        done, skipped, redone, failures = watch.sum_when_done([done, skipped, redone, failures])
        seconds = time.perf_counter() - start
        if rank == 0 and not args.quiet:
            total = done + skipped + failures
            print(f"segmented {done} of {total} images into {out} ({skipped} skipped: already done; {redone} "
                  f"redone: made differently; {failures} failed) in {seconds:.1f} s, "
                  f"{done / max(seconds, 1e-9):.2f} images/s", file=sys.stderr)
        return 1 if failures or inputs.problems else 0
    except distributed.PeerFailure as error:
        print(f"mvpseg: error: {error}: process {rank} stops too; every output written is whole (start the same "
              f"command again with --skip-existing to go on)", file=sys.stderr)
        return 1
    except BaseException:
        watch.fail()
        raise
    finally:
        watch.close()
        if ours:
            distributed.cleanup()
