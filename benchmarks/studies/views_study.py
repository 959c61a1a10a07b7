"""Do the view terms make the prompts look at different parts? MVP-SEG's row against variants of its loss.

::

    python benchmarks/studies/views_study.py --out runs/views-study --world-seed 0 --num-train 300 --num-val 60 \
        --iters 250 --seeds 2 --setting mvp-seg --setting views:views=1 --setting overlap:overlap=1 \
        --json benchmarks/results/views_study_parts_seed0.json

Each ``--setting NAME[@ROW][:field=value,...]`` is the demo's MVP-SEG row (or the row ROW, e.g. ``k-prompts``;
:func:`mvpseg.world.demo.row_train_config`, run as the demo runs it: :func:`mvpseg.world.demo.learned_row_run`) with those :class:`mvpseg.config.LossWeights` fields changed (the
view terms taken over the world's things); the ``--world`` (parts by default, written with the demo's preset)
is shared by every setting, and every setting trains on the same prompt seeds from the same feature caches.
Per setting and prompt seed: mIoU(S) / mIoU(U) / hIoU and both measures of :mod:`mvpseg.world.views` (part JS
and which prompt leads where), with their ceilings on the same val split. ``--figures`` draws the first prompt
seed's ``views_*.png``; ``--reuse`` evaluates runs an earlier call finished; settings an earlier call measured
on the same world and settings are kept in ``OUT/views_study.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mvpseg.config import DEMO_PRESETS, DemoConfig, LossWeights
from mvpseg.dense import feature_stride
from mvpseg.files import write_text
from mvpseg.world.demo import demo_setup, learned_row_run, row_train_config
from mvpseg.world.views import view_ceiling, view_figures

_KEYS = ("miou_seen", "miou_unseen", "hiou")
_VIEW_KEYS = ("js", "lead_js", "differ", "lead_differ", "lead_js_unseen")


def parse_setting(text: str) -> tuple[str, str, dict[str, Any]]:
    """``NAME[@ROW][:field=value,...]`` -> (name, the demo row it starts from (default mvp-seg), LossWeights
    overrides); values are parsed as JSON, else strings."""
    name, _, rest = text.partition(":")
    name, _, row = name.partition("@")
    overrides: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if key not in LossWeights.__dataclass_fields__:
            raise SystemExit(f"{key!r} is not a LossWeights field")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return name, row or "mvp-seg", overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--world", default="parts")
    parser.add_argument("--world-seed", type=int, default=0)
    parser.add_argument("--num-train", type=int, default=None, help="default: the demo preset's")
    parser.add_argument("--num-val", type=int, default=None, help="default: the demo's")
    parser.add_argument("--iters", type=int, default=None, help="default: the demo's")
    parser.add_argument("--seeds", type=int, default=3, help="prompt seeds world-seed .. world-seed + N - 1")
    parser.add_argument("--setting", action="append", required=True)
    parser.add_argument("--reuse", action="store_true", help="evaluate runs that already have their prompts")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--figures", action="store_true",
                        help="draw views_*.png of the first prompt seed of each setting into OUT/figures/NAME")
    args = parser.parse_args()
    values = dict(DEMO_PRESETS[args.world], seed=args.world_seed, out=args.out)
    values.update({key: getattr(args, key) for key in ("num_train", "num_val", "iters") if getattr(args, key)})
    config = DemoConfig(**values)
    out = Path(config.out)
    setup = demo_setup(config)
    module, world, val, clip, inference = setup.module, setup.world, setup.val, setup.clip, setup.inference
    has_parts = module.HAS_PARTS  # the patterns world has no parts: mIoU only
    ceiling = None
    if has_parts:
        thing_parts = [module.thing_parts(c) for c in range(len(module.THING_CLASSES))]
        grid = (config.short_side // feature_stride(clip.model.visual),) * 2
        ceiling = view_ceiling(val, thing_parts, config.num_prompts, grid)
        print(f"ceiling: part JS {ceiling['js']:.3f}  lead JS {ceiling['lead_js']:.3f}", flush=True)
    results: dict[str, Any] = {"config": asdict(config), "ceiling": ceiling, "settings": {}}
    earlier = out / "views_study.json"
    if earlier.exists():  # keep the settings an earlier call on the same world measured
        previous = json.loads(earlier.read_text())
        if previous["config"] == results["config"]:
            results["settings"] = previous["settings"]
    for text in args.setting:
        name, row, overrides = parse_setting(text)
        runs = []
        for seed in range(config.seed, config.seed + args.seeds):
            train_config = row_train_config(config, world, row, seed, out)
            loss = replace(train_config.loss, **overrides)
            if loss.views or loss.overlap:
                loss = replace(loss, views_classes=tuple(module.THING_CLASSES))
            train_config = replace(train_config, loss=loss, out=str(out / "runs" / name / f"seed-{seed}"))
            tic = time.perf_counter()
            figures, segmenter = learned_row_run(train_config, clip, val, module, inference, reuse=args.reuse)
            views = figures["views"]["summary"] if has_parts else dict.fromkeys(_VIEW_KEYS)
            run = {"seed": seed, **{key: figures[key] for key in _KEYS}, "views": views,
                   "seconds": round(time.perf_counter() - tic, 1)}
            runs.append(run)
            if args.figures and has_parts and seed == config.seed:
                (out / "figures" / name).mkdir(parents=True, exist_ok=True)
                view_figures(segmenter, val, out / "figures" / name, module, count=3)
            print(f"{name} seed {seed}: " + "  ".join(f"{key} {run[key]:.1f}" for key in _KEYS) + "  " +
                  "  ".join(f"{key} {views[key]:.3f}" for key in _VIEW_KEYS if views[key] is not None) +
                  f"  ({run['seconds']:.0f} s)", flush=True)
        mean = {key: float(np.mean([run[key] for run in runs if run[key] is not None])) for key in _KEYS}
        mean.update({key: float(np.mean([run["views"][key] for run in runs if run["views"][key] is not None]))
                     for key in _VIEW_KEYS if has_parts})
        unseen = [run["miou_unseen"] for run in runs]
        mean["miou_unseen_range"] = [min(unseen), max(unseen)]
        results["settings"][name] = {"row": row, "loss": asdict(loss), "mean": mean, "runs": runs}
        print(f"{name} mean: " + "  ".join(f"{key} {value:.3f}" if isinstance(value, float) else f"{key} {value}"
                                           for key, value in mean.items()), flush=True)
        text_out = json.dumps(results, indent=2) + "\n"
        write_text(out / "views_study.json", text_out)
        if args.json:
            write_text(Path(args.json), text_out)


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
