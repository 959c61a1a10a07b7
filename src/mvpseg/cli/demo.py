"""``mvpseg demo``: the whole method offline on the synthetic world, in minutes on a CPU."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import DEMO_PRESETS, DemoConfig
from .flags import add_config_flags, apply_overrides, overrides

__all__ = ["add_parser", "run"]


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "demo", help="the whole method offline on a synthetic world, in minutes on a CPU",
        description="Generate the synthetic world, train prompts on its seen classes with the tiny CLIP shipped "
                    "in mvpseg, evaluate zero-shot on its val split and print the ablation table (MaskCLIP "
                    "templates, 1 prompt, K prompts, + OCLoss, + GPR = MVP-SEG) with mIoU(S), mIoU(U), hIoU. "
                    "Writes OUT/results.md, OUT/results.json, overlays and per-prompt maps. No network needed. "
                    "--world parts runs it on things made of parts (256 px, an 8x8 feature grid), measures where "
                    "each prompt looks (and the ceiling the grid allows), adds a row with GPR switched off at inference "
                    "and, beyond the paper, rows trained with a view-assignment loss and a map-overlap penalty.",
    )
    add_config_flags(parser, DemoConfig, title="demo", presets=DEMO_PRESETS)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..world.demo import format_results, run_demo

    if args.threads:
        torch.set_num_threads(args.threads)
    given = overrides(args)
    config = apply_overrides(DemoConfig(**DEMO_PRESETS[given.get("world", "patterns")]), given)
    rows = run_demo(config, progress=not args.quiet)
    print(format_results(rows))
    print(f"results in {Path(config.out) / 'results.md'}", file=sys.stderr)
    return 0
