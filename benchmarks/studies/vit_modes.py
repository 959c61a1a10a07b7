"""The training-free ViT dense modes in the parts world, and MVP-SEG's prompts learned over each.

For every world seed and every ``vit_mode`` (mvpseg.config.VIT_MODES) of a tiny ViT CLIP (``--clip``; default the
hybrid ``mvpseg-tiny-parts-hvit``, a 16x16 grid on the world's 256-px images): the template row (MaskCLIP's
85 templates, no training) and the MVP-SEG row (K prompts + OCLoss + GPR, trained exactly as
``mvpseg demo --world parts`` trains its MVP-SEG row, over that mode's features; the mean of
``--prompt-seeds`` seeds, with their spread), mIoU(S) / mIoU(U) / hIoU, and the MVP-SEG prompts' part
views (:mod:`mvpseg.world.views`).

::

    python benchmarks/studies/vit_modes.py --world-seeds 0 1 2          # benchmarks/results/vit_modes_hvit.json
    python benchmarks/studies/vit_modes.py --clip mvpseg-tiny-parts-vit --results benchmarks/results/vit_modes.json
    python benchmarks/studies/vit_modes.py --quick --out /tmp/vit-modes --results /tmp/vit-modes.json  # a check

Each (world seed, mode) result is written as it is done (``OUT/seed-N/MODE/result.json``) and kept by
a rerun with ``--reuse``, so an interrupted study continues where it stopped; ``--collect`` writes the
results JSON from what is done without running anything.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/: cpuinfo
from cpuinfo import cpu_summary  # noqa: E402

from mvpseg.build import build_mvpseg  # noqa: E402
from mvpseg.config import DEMO_PRESETS, VIT_MODES, DemoConfig  # noqa: E402
from mvpseg.dense import feature_stride  # noqa: E402
from mvpseg.files import write_text  # noqa: E402
from mvpseg.inference import Segmenter  # noqa: E402
from mvpseg.world import views as world_views  # noqa: E402
from mvpseg.world.demo import DemoSetup, demo_setup, learned_row_run, row_train_config, run_figures  # noqa: E402
from mvpseg.world.registry import get_world  # noqa: E402

KEYS = ("miou_seen", "miou_unseen", "hiou")
RESULTS = Path(__file__).resolve().parent.parent / "results" / "vit_modes_hvit.json"
#: Published mIoU on CLIP ViT-B/16, no post-processing (VOC-20, Context-59), as docs/modes.md gives them.
PUBLISHED = {"maskclip": (74.9, 26.4), "csa": (80.4, 34.2), "qq": (80.9, 35.9), "naclip": (79.7, 35.2),
             "resclip": (86.0, 36.8), "scclip": (84.3, 40.1)}


def _ranks(values: list[float]) -> np.ndarray:
    """Ranks from 1, ties sharing their mean rank."""
    array = np.asarray(values, dtype=float)
    ranks = np.empty(len(array))
    for value in np.unique(array):
        where = array == value
        ranks[where] = np.mean(np.flatnonzero(np.sort(array) == value) + 1)
    return ranks


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation of two equally long lists (ties take their mean rank)."""
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / np.sqrt((ra**2).sum() * (rb**2).sum()))


def published_order(results: dict[str, Any]) -> dict[str, Any]:
    """The world's template hIoU (mean over world seeds) of the published modes against their VOC-20 and
    Context-59 figures: Spearman's rho for each, and whether the untouched last block (vanilla) is below
    MaskCLIP's value path, real CLIP's first sign."""
    seeds = list(results["seeds"])

    def mean_hiou(mode: str) -> float | None:
        rows = [results["seeds"][seed].get(mode) for seed in seeds]
        return None if any(row is None for row in rows) else float(np.mean([r["templates"]["hiou"] for r in rows]))

    modes = [mode for mode in PUBLISHED if mean_hiou(mode) is not None]
    world = [mean_hiou(mode) for mode in modes]
    out: dict[str, Any] = {"modes": modes, "world_hiou": world}
    if len(modes) >= 3:
        out["rho_voc20"] = spearman(world, [PUBLISHED[m][0] for m in modes])
        out["rho_context59"] = spearman(world, [PUBLISHED[m][1] for m in modes])
    vanilla, maskclip = mean_hiou("vanilla"), mean_hiou("maskclip")
    if vanilla is not None and maskclip is not None:
        out["vanilla_hiou"], out["maskclip_hiou"] = vanilla, maskclip
        out["vanilla_below_maskclip"] = bool(vanilla < maskclip)
        out["vanilla_below_maskclip_every_seed"] = all(
            results["seeds"][s]["vanilla"]["templates"]["hiou"] < results["seeds"][s]["maskclip"]["templates"]["hiou"]
            for s in seeds)
    return out


def _figures(metrics: dict[str, Any]) -> dict[str, Any]:
    return {key: metrics[key] for key in KEYS}


def _mode(config: DemoConfig, setup: DemoSetup, out: Path, progress: bool) -> dict[str, Any]:
    """The template and MVP-SEG rows of one mode on one world."""
    world, world_dir, val, clip, inference = setup.module, setup.world, setup.val, setup.clip, setup.inference
    tic = time.perf_counter()
    templates = Segmenter(build_mvpseg(clip, None, vit_mode=config.vit_mode), inference, device="cpu")
    row: dict[str, Any] = {"mode": config.vit_mode,
                           "templates": _figures(run_figures(templates, val, world, config.seed, views=False))}
    runs = []
    for offset in range(config.seeds):
        seed = config.seed + offset
        train_config = row_train_config(config, world_dir, "mvp-seg", seed, out)
        if progress:
            print(f"  {config.vit_mode}: training MVP-SEG, prompt seed {seed}", flush=True)
        figures, _ = learned_row_run(train_config, clip, val, world, inference)
        runs.append({"seed": seed, **_figures(figures), "views": figures["views"]["summary"]})
    row["mvp_seg"] = {key: float(np.mean([run[key] for run in runs])) for key in KEYS}
    row["mvp_seg"]["spread"] = {key: [min(run[key] for run in runs), max(run[key] for run in runs)] for key in KEYS}
    summary_keys = [key for key, value in runs[0]["views"].items() if isinstance(value, (int, float))]
    row["mvp_seg"]["views"] = {key: float(np.mean([run["views"][key] for run in runs
                                                   if run["views"][key] is not None] or [np.nan]))
                               for key in summary_keys}
    row["mvp_seg"]["seeds"] = runs
    row["seconds"] = round(time.perf_counter() - tic, 1)
    return row


def run(world_seeds: list[int], modes: list[str], out: Path, config: DemoConfig, reuse: bool,
        progress: bool, collect: bool = False) -> dict[str, Any]:
    """Every (world seed, mode) result; with ``collect`` only those an earlier run finished, running nothing."""
    results: dict[str, Any] = {"clip": config.clip, "settings": asdict(config), "cpu": cpu_summary(),
                               "threads": torch.get_num_threads(), "seeds": {}}
    world = get_world(config.world)
    for world_seed in world_seeds:
        seed_out = out / f"seed-{world_seed}"
        rows: dict[str, Any] = {}
        ceiling_file = seed_out / "ceiling.json"
        if collect:
            if ceiling_file.is_file():
                rows["ceiling"] = json.loads(ceiling_file.read_text())
            rows.update({mode: json.loads((seed_out / mode / "result.json").read_text()) for mode in modes
                         if (seed_out / mode / "result.json").is_file()})
            if len(rows) > ("ceiling" in rows):
                results["seeds"][str(world_seed)] = rows
            continue
        seed_config = replace(config, seed=world_seed)
        setup = demo_setup(replace(seed_config, out=str(seed_out)), progress)
        grid = (config.short_side // feature_stride(setup.clip.model.visual),) * 2
        rows["ceiling"] = world_views.view_ceiling(setup.val, [world.thing_parts(c) for c in
                                                               range(len(world.THING_CLASSES))],
                                                   config.num_prompts, grid)
        write_text(ceiling_file, json.dumps(rows["ceiling"], indent=1) + "\n")
        for mode in modes:
            mode_out = seed_out / mode
            done = mode_out / "result.json"
            if reuse and done.is_file():
                rows[mode] = json.loads(done.read_text())
                continue
            if progress:
                print(f"world seed {world_seed}, mode {mode}", flush=True)
            rows[mode] = _mode(replace(seed_config, vit_mode=mode, out=str(mode_out)), setup, mode_out, progress)
            write_text(done, json.dumps(rows[mode], indent=1) + "\n")
            if progress:
                t, m = rows[mode]["templates"], rows[mode]["mvp_seg"]
                print(f"  templates {t['miou_seen']:.1f} / {t['miou_unseen']:.1f} / {t['hiou']:.1f}   "
                      f"MVP-SEG {m['miou_seen']:.1f} / {m['miou_unseen']:.1f} / {m['hiou']:.1f}  "
                      f"({rows[mode]['seconds']:.0f} s)", flush=True)
        results["seeds"][str(world_seed)] = rows
    return results


def table(results: dict[str, Any]) -> str:
    """Markdown: one line per mode, mIoU(S) / mIoU(U) / hIoU per world seed for templates and MVP-SEG."""
    seeds = list(results["seeds"])
    header = "| mode | " + " | ".join(f"templates, seed {s} | MVP-SEG, seed {s}" for s in seeds) + " |"
    lines = [header, "|---|" + "---:|" * (2 * len(seeds))]
    modes = list(dict.fromkeys(m for seed in seeds for m in results["seeds"][seed] if m != "ceiling"))
    for mode in modes:
        cells = []
        for seed in seeds:
            row = results["seeds"][seed].get(mode)
            if row is None:
                cells += ["-", "-"]
                continue
            t, m = row["templates"], row["mvp_seg"]
            cells.append(f"{t['miou_seen']:.1f} / {t['miou_unseen']:.1f} / {t['hiou']:.1f}")
            low, high = m["spread"]["miou_unseen"]
            cells.append(f"{m['miou_seen']:.1f} / {m['miou_unseen']:.1f} ({low:.1f}-{high:.1f}) / {m['hiou']:.1f}")
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--modes", nargs="+", default=list(VIT_MODES), choices=VIT_MODES)
    parser.add_argument("--prompt-seeds", type=int, default=3, help="prompt-training seeds per MVP-SEG row")
    parser.add_argument("--clip", default="mvpseg-tiny-parts-hvit",
                        help="the tiny ViT; mvpseg-tiny-parts-vit (linear patches) made benchmarks/results/vit_modes.json")
    parser.add_argument("--clip-weights", default="mvpseg", help="mvpseg: the shipped weights; a file; none: random")
    parser.add_argument("--out", type=Path, default=Path("runs/vit-modes"))
    parser.add_argument("--results", type=Path, default=RESULTS, help="the JSON written at the end")
    parser.add_argument("--reuse", action="store_true", help="keep the (seed, mode) results an earlier run finished")
    parser.add_argument("--collect", action="store_true",
                        help="run nothing: gather the (seed, mode) results an earlier, perhaps interrupted, run finished")
    parser.add_argument("--merge", type=Path, default=None,
                        help="run nothing: add the (seed, mode) rows of this results JSON (a study of other modes, "
                             "same settings) to --results, and recompute its published order")
    parser.add_argument("--quick", action="store_true", help="a few images and steps: checks that the study runs")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.merge is not None:
        results = json.loads(args.results.read_text())
        extra = json.loads(args.merge.read_text())
        if extra["settings"] != results["settings"]:
            raise SystemExit(f"{args.merge} was run with other settings than {args.results}: not merged")
        for seed, rows in extra["seeds"].items():
            results["seeds"].setdefault(seed, {}).update({m: r for m, r in rows.items() if m != "ceiling"})
        results.setdefault("merged", []).append({"file": args.merge.name, "seconds": extra.get("seconds"),
                                                 "cpu": extra.get("cpu")})
        results["published_order"] = published_order(results)
        write_text(args.results, json.dumps(results, indent=1) + "\n")
        print(table(results))
        print(json.dumps(results["published_order"]))
        return
    weights = None if str(args.clip_weights).lower() == "none" else args.clip_weights
    config = DemoConfig(**{**DEMO_PRESETS["parts"], "clip": args.clip, "clip_weights": weights,
                           "seeds": args.prompt_seeds, "student_iters": 0})
    if args.quick:
        config = replace(config, num_train=8, num_val=4, iters=2, batch_size=2, cache_views=1)
    tic = time.perf_counter()
    results = run(args.world_seeds, args.modes, args.out, config, args.reuse, progress=True, collect=args.collect)
    results["seconds"] = round(time.perf_counter() - tic, 1)
    results["published_order"] = published_order(results)
    write_text(args.results, json.dumps(results, indent=1) + "\n")
    print(table(results))
    print(json.dumps(results["published_order"]))
    print(f"wrote {args.results}", file=sys.stderr)


if __name__ == "__main__":
    main()
