"""``mvpseg train``: learn MVP-SEG's prompts on a dataset's seen classes; and the run machinery it shares.

A run's settings come, in this order, from the dataset's preset (or a run's ``config.json`` given
with ``--config``), then from the flags typed: one flag per :class:`mvpseg.config.TrainConfig` field.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..config import TRAIN_PRESETS, TrainConfig
from .common import UsageError, add_clip_arguments, clip_source
from .flags import add_config_flags, apply_overrides, overrides, read_config_file

__all__ = ["add_parser", "add_run_flags", "launch", "run", "run_config"]

#: Fields whose flag is not named after the field (the flag names mvpseg has always had).
RENAME = {"model.use_gpr": "gpr", "loss.seg": "seg-weight", "loss.cls": "cls-weight", "loss.oc": "oc-weight"}
#: Fields set through the shared CLIP options (--clip, --pretrained / --clip-weights, --device).
_CLIP_FIELDS = ("clip", "pretrained", "device")


def add_run_flags(parser: argparse.ArgumentParser, cls: type, presets: Mapping[str, Mapping[str, Any]],
                  rename: Mapping[str, str] | None = None, titles: Mapping[str, str] | None = None) -> None:
    """--config, --resume, --quiet, the CLIP options and one flag per field of the run config ``cls``."""
    parser.add_argument("--config", metavar="FILE",
                        help="start from a run's config.json (every field of that run; flags given here override "
                             "them), e.g. to repeat or resume a run")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_flags(parser, cls, rename=rename, skip=_CLIP_FIELDS, presets=presets, title="run", titles=titles)
    add_clip_arguments(parser, default_from="the --config file's")


def run_config(args: argparse.Namespace, cls: type, presets: Mapping[str, Mapping[str, Any]]) -> Any:
    """The run's config: a --config file or the dataset's preset, then the flags given.

    Raises:
        UsageError: neither --dataset nor --config, no --data-root, or an unreadable config file.
    """
    given = overrides(args)
    if args.config:
        try:
            base = read_config_file(args.config, cls)
        except ValueError as error:
            raise UsageError(str(error)) from error
    else:
        dataset = given.get("dataset")
        if dataset is None:
            raise UsageError(f"give --dataset ({', '.join(presets)} or custom) or --config RUN/config.json")
        from ..data.classes import canonical_name

        try:
            key = canonical_name(dataset)
        except ValueError as error:
            raise UsageError(str(error)) from error
        base = cls.from_dict(dict(presets.get(key, {"dataset": key})))  # an alias ("coco_stuff") keeps its preset
        given["dataset"] = key
    if args.clip:
        given["clip"] = args.clip
    if args.pretrained is not None or args.clip_weights:
        given["pretrained"] = clip_source(args)
    if args.device:
        given["device"] = args.device
    try:
        config = apply_overrides(base, given)
    except (TypeError, ValueError) as error:
        raise UsageError(str(error)) from error
    if not config.data_root:
        raise UsageError("give --data-root DIR: the folder holding the dataset")
    return config


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "train", help="train MVP-SEG prompts on a dataset's seen classes",
        description="Train MVP-SEG prompts (K segmentation prompts + a global prompt) on a frozen CLIP with the "
                    "seen classes of a dataset. Writes OUT/prompts.safetensors (use with --prompts), "
                    "OUT/checkpoint.safetensors (for --resume), OUT/config.json (for --config), OUT/log.csv and "
                    "TensorBoard logs. Under torchrun (torchrun --nproc_per_node N -m mvpseg train ...) the global "
                    "batch is split over the processes. Settings come from the dataset's preset (or --config), "
                    "then from the flags given.",
    )
    add_run_flags(parser, TrainConfig, TRAIN_PRESETS, rename=RENAME,
                  titles={"model": "method: the model (each piece switchable for the paper's ablations)",
                          "loss": "method: the loss weights"})
    parser.set_defaults(run=run)


def launch(loop: Callable[..., Path], config: Any, args: argparse.Namespace, what: str) -> int:
    """Run a training loop (every process under torchrun), say where its result went, end the process group."""
    from ..distributed import cleanup, is_main_process

    try:
        path = loop(config, resume=args.resume, progress=not args.quiet)
        if is_main_process() and not args.quiet:
            print(f"{what} written to {path}", file=sys.stderr)
    finally:
        cleanup()
    return 0


def run(args: argparse.Namespace) -> int:
    config = run_config(args, TrainConfig, TRAIN_PRESETS)
    from ..train import train

    return launch(train, config, args, "prompts")
