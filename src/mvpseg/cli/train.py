"""``mvpseg train``: learn MVP-SEG's prompts on a dataset's seen classes.

A run's settings come, in this order, from the dataset's preset (or a run's ``config.json`` given
with ``--config``), then from the flags typed: one flag per :class:`mvpseg.config.TrainConfig` field.
"""

from __future__ import annotations

import argparse

from ..config import TRAIN_PRESETS, TrainConfig
from .common import RENAME, add_run_flags, launch, run_config

__all__ = ["add_parser", "run"]


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


def run(args: argparse.Namespace) -> int:
    config = run_config(args, TrainConfig, TRAIN_PRESETS)
    from ..train import train

    return launch(train, config, args, "prompts")
