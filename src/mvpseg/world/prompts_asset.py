"""The world prompts shipped with the package: what ``mvpseg serve`` segments with when given no model.

MVP-SEG prompts (K = 3, OCLoss, GPR) trained on the synthetic world's seen classes with the shipped
tiny CLIP, exactly as the demo's "mvp-seg" row trains its first seed (:func:`mvpseg.world.demo.row_train_config`).
To make the file again (about a minute on a laptop CPU)::

    python -m mvpseg.world.prompts_asset --work /tmp/world-prompts
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from ..config import DemoConfig

__all__ = ["WORLD_PROMPTS", "train_world_prompts", "main"]

#: The shipped prompt checkpoint (a few KB), learned on ``mvpseg-tiny`` with its "mvpseg" weights.
WORLD_PROMPTS = Path(__file__).parent / "assets" / "mvpseg-tiny-world-prompts.safetensors"


def train_world_prompts(work: str | Path, dest: str | Path = WORLD_PROMPTS, config: DemoConfig | None = None,
                        progress: bool = True) -> Path:
    """Write the world's training split, train the demo's MVP-SEG row (first seed) and copy its prompts to ``dest``.

    Args:
        work: a folder for the world, the feature cache and the run.
        dest: where the prompt checkpoint goes.
        config: the demo settings to train with (default: the demo's defaults).
        progress: show progress bars.

    Returns:
        ``dest``.
    """
    from ..checkpoint import set_inference_settings
    from ..train import train
    from .demo import row_train_config
    from .layout import write_world

    config = config or DemoConfig()
    work = Path(work)
    world = write_world(work / "world", config.num_train, 0, seed=config.seed, progress=progress)
    prompts = train(row_train_config(config, world, "mvp-seg", config.seed, work), progress=progress)
    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(prompts, dest)
    # the scale the prompts were made for, so that the page, segment and Python agree by default
    set_inference_settings(dest, {"short_side": config.short_side, "mode": "whole"})
    return Path(dest)


def main(argv: list[str] | None = None) -> None:
    """``python -m mvpseg.world.prompts_asset --work DIR [--dest FILE]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="folder for the world, the feature cache and the run")
    parser.add_argument("--dest", default=str(WORLD_PROMPTS), help="where to write the prompts (default: the asset)")
    args = parser.parse_args(argv)
    print(train_world_prompts(args.work, args.dest))


if __name__ == "__main__":
    main()
