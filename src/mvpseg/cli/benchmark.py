"""``mvpseg benchmark``: the field's tables (training-free, cross-dataset) in one resumable run (:mod:`mvpseg.benchmark`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import VIT_MODES, InferenceConfig, ModelSource
from ..protocols import PROTOCOL_NAMES
from .common import UsageError, add_model_flags, model_source
from .flags import add_config_flags, overrides

if TYPE_CHECKING:
    from ..benchmark import Method

__all__ = ["add_parser", "run"]


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "benchmark", help="the papers' mIoU tables: every (benchmark, method) cell, resumable",
        description="Evaluate every method on every benchmark under a named protocol (mvpseg.protocols) and write "
                    "DIR/results.json (each cell's mIoU, per-class IoU, what made it, timing) and DIR/results.md (the "
                    "tables in the papers' column order, the average, each row's protocol, the missing cells and why, "
                    "where each number came from). A finished cell is not redone unless its settings, data or model "
                    "changed; a killed run continues each cell from its last checkpoint, with the numbers of an "
                    "uninterrupted run. A benchmark whose data are missing is skipped with one line; the exit status "
                    "is 1 when a requested cell is missing or failed. Under torchrun the images are shared out over "
                    "the processes. docs/cli.md and docs/reproduce.md give the commands for both tables.",
    )
    parser.add_argument("--benchmarks", required=True, metavar="LIST",
                        help="all (both tables), training-free (voc21, context60, coco-object, voc20, context59, "
                             "coco-stuff, cityscapes, ade20k), cross-dataset (ade847, pc459, ade20k, context59, "
                             "voc20), or comma-separated names")
    parser.add_argument("--data-root", metavar="DIR",
                        help="the folder holding the datasets' top folders: VOCdevkit (VOC2012, VOC2010), "
                             "coco_stuff164k, cityscapes, ADEChallengeData2016, ADE20K_2021_17_01 (docs/datasets.md)")
    parser.add_argument("--root", action="append", default=[], metavar="NAME=DIR",
                        help="a benchmark's own data root over --data-root (repeatable), e.g. voc21=/data/voc")
    parser.add_argument("--protocol", default="mvpseg", choices=(*PROTOCOL_NAMES, "own"),
                        help="the evaluation protocol (mvpseg.protocols): its resize, windows, templates, class file "
                             "and thresholds per benchmark; own: each ViT mode under its repository's protocol "
                             "(csa: sclip, qq and qk: clearclip, naclip, resclip, scclip; others, prompts and "
                             "students: mvpseg). Default: mvpseg")
    methods = parser.add_argument_group("methods (rows; none given: the templates in the protocol's ViT mode)")
    methods.add_argument("--vit-modes", metavar="LIST",
                         help=f"MaskCLIP's templates in each of these ViT modes, one row each ({', '.join(VIT_MODES)})")
    methods.add_argument("--prompts", action="append", default=[], metavar="[LABEL=]CKPT",
                         help="learned prompts (file, model folder or Hub id), a row each (repeatable); the row's "
                              "label: LABEL, else prompts:<name>")
    methods.add_argument("--student", action="append", default=[], metavar="[LABEL=]CKPT",
                         help="an MVP-SEG+ student (file, model folder or Hub id), a row each (repeatable)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder: results.json, results.md, partial/")
    parser.add_argument("--limit", type=int, metavar="N", help="evaluate only the first N images of each split (smoke)")
    parser.add_argument("--checkpoint-every", type=int, default=50, metavar="N",
                        help="write a cell's confusion matrix every N images, to continue from there after a kill "
                             "(default: 50)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_model_flags(parser, skip=("prompts", "student", "onnx", "vit_mode"),
                    title="CLIP (every row's; a checkpoint's own CLIP when not given)")
    add_config_flags(parser, InferenceConfig, title="inference, laid over the protocol's settings (the defaults "
                                                    "shown are mvpseg's own)")
    parser.set_defaults(run=run)


def _labelled(kind: str, value: str) -> tuple[str, str]:
    """(row label, checkpoint) of a --prompts / --student value: LABEL=CKPT, or a label from the checkpoint's name."""
    head, sep, tail = value.partition("=")
    if sep and head and "/" not in head and not Path(value).exists():
        return head, tail
    path = Path(value)
    if path.is_file():
        name = path.parent.name if path.stem in ("prompts", "student") and path.parent.name else path.stem
    elif path.is_dir():
        name = path.resolve().name
    else:
        name = value  # a Hub id
    return f"{kind}:{name}", value


def methods_of(args: argparse.Namespace) -> list[Method]:
    """The rows: each ViT mode's templates, then each --prompts, then each --student (labels made unique)."""
    from ..benchmark import Method

    base = model_source(args)
    rows: list[tuple[str, ModelSource]] = []
    for mode in (m.strip() for m in (args.vit_modes or "").split(",") if m.strip()):
        if mode not in VIT_MODES:
            raise UsageError(f"--vit-modes: unknown mode {mode!r}; choose from {', '.join(VIT_MODES)}")
        rows.append((mode, ModelSource(clip=base.clip, pretrained=base.pretrained, vit_mode=mode)))  # type: ignore[arg-type]  # checked above
    for kind, values in (("prompts", args.prompts), ("student", args.student)):
        for value in values:
            label, checkpoint = _labelled(kind, value)
            rows.append((label, ModelSource(clip=base.clip, pretrained=base.pretrained,
                                            prompts=checkpoint if kind == "prompts" else None,
                                            student=checkpoint if kind == "student" else None)))
    if not rows:
        rows.append(("templates", base))
    methods, seen = [], set()
    for label, source in rows:
        unique, count = label, 1
        while unique in seen:
            count += 1
            unique = f"{label}-{count}"
        seen.add(unique)
        methods.append(Method(label=unique, source=source))
    return methods


def _inference_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The inference flags typed, as InferenceConfig fields (the dense options as a dict of their own)."""
    values: dict[str, Any] = {}
    for path, value in overrides(args).items():
        head, _, rest = path.partition(".")
        if head not in InferenceConfig.__dataclass_fields__:
            continue
        if rest:
            values.setdefault(head, {})[rest] = value
        else:
            values[head] = value
    return values


def run(args: argparse.Namespace) -> int:
    from ..benchmark import BenchmarkSettings, run_benchmark
    from ..benchmark_tables import parse_benchmarks, render_results, table_groups
    from ..distributed import cleanup, init_distributed, is_main_process
    from ..protocols import protocol_benchmarks

    try:
        benchmarks = parse_benchmarks(args.benchmarks)
        roots = {}
        for item in args.root:
            name, sep, folder = item.partition("=")
            if not sep or not folder:
                raise UsageError(f"--root {item!r}: give NAME=DIR, e.g. voc21=/data/voc")
            roots[parse_benchmarks(name)[0]] = Path(folder)
        if args.protocol != "own":
            protocol_benchmarks(args.protocol)  # an unknown or not yet filled protocol: one line
    except ValueError as error:
        raise UsageError(str(error)) from error
    if args.data_root is None and any(benchmark not in roots for benchmark in benchmarks):
        raise UsageError("give --data-root DIR (the folder holding VOCdevkit, coco_stuff164k, ...) or a --root "
                         "NAME=DIR for every benchmark")
    for flag, value in (("--limit", args.limit), ("--checkpoint-every", args.checkpoint_every)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be a positive number of images, not {value}")
    settings = BenchmarkSettings(
        benchmarks=benchmarks, methods=methods_of(args), out=Path(args.out),
        data_root=None if args.data_root is None else Path(args.data_root), roots=roots, protocol=args.protocol,
        overrides=_inference_overrides(args), limit=args.limit, checkpoint_every=args.checkpoint_every,
        tables=table_groups(args.benchmarks, benchmarks))
    _, _, device = init_distributed(args.device)
    try:
        results = run_benchmark(settings, device=device, progress=not args.quiet)
        if is_main_process():
            print(render_results(results), end="")  # the tables, the missing cells, where each number came from
            print(f"wrote {settings.out / 'results.json'} and {settings.out / 'results.md'}", file=sys.stderr)
    finally:
        cleanup()
    return 1 if results["incomplete"] else 0
