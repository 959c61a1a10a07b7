"""Predict time of every ViT dense mode against ``maskclip``'s, on ViT-B/16 (random weights) at 512x683.

::

    python benchmarks/studies/vit_mode_speed.py    # benchmarks/results/vit_mode_speed.json

Each round predicts the same 683x512 photo (short side 512, two 512-px windows, 20 classes, templates)
once per mode, modes in a rotating order, so that the machine's load falls on every mode alike; the
figure per mode is its median over the rounds and the ratio to ``maskclip``'s median. The image
tower's FLOPs per mode (``torch.utils.flop_counter``) say how much of a mode's time is extra work.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from statistics import median

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/: cpuinfo, inference_bench
from cpuinfo import cpu_summary  # noqa: E402
from inference_bench import counting_flops  # noqa: E402

from mvpseg.build import build_mvpseg  # noqa: E402
from mvpseg.clip import load_clip  # noqa: E402
from mvpseg.config import VIT_MODES, InferenceConfig  # noqa: E402
from mvpseg.dense import dense_features  # noqa: E402
from mvpseg.files import write_text  # noqa: E402
from mvpseg.inference import Segmenter  # noqa: E402

RESULTS = Path(__file__).resolve().parent.parent / "results" / "vit_mode_speed.json"
NAMES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "dining table",
         "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train", "tv monitor"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--clip", default="ViT-B-16")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    clip = load_clip(args.clip, pretrained=None)
    image = np.random.default_rng(0).integers(0, 256, (512, 683, 3), dtype=np.uint8)
    config = InferenceConfig(precision="fp32")
    segmenters = {mode: Segmenter(build_mvpseg(clip, None, vit_mode=mode), config, device="cpu") for mode in VIT_MODES}
    flops = {}
    crop = torch.randn(2, 3, 512, 512)
    for mode in VIT_MODES:
        with torch.inference_mode(), counting_flops() as counter:
            dense_features(clip.model, crop, mode)
        flops[mode] = counter.get_total_flops() / 1e9
        segmenters[mode].predict(image, NAMES)  # warm-up, and the text embeddings cached
    seconds: dict[str, list[float]] = {mode: [] for mode in VIT_MODES}
    loads = []
    for index in range(args.rounds):
        order = VIT_MODES[index % len(VIT_MODES):] + VIT_MODES[: index % len(VIT_MODES)]
        loads.append([round(value, 2) for value in os.getloadavg()])
        for mode in order:
            tic = time.perf_counter()
            segmenters[mode].predict(image, NAMES)
            seconds[mode].append(time.perf_counter() - tic)
    base = median(seconds["maskclip"])
    results = {
        "clip": args.clip, "image": [512, 683], "windows": 2, "classes": len(NAMES), "precision": "fp32",
        "threads": torch.get_num_threads(), "cpu": cpu_summary(), "load_average_per_round": loads,
        "modes": {mode: {"median_seconds": median(values), "runs": [round(v, 3) for v in values],
                         "ratio_to_maskclip": median(values) / base, "tower_gflop_two_windows": flops[mode]}
                  for mode, values in seconds.items()},
    }
    write_text(args.out, json.dumps(results, indent=1) + "\n")
    for mode, figures in results["modes"].items():
        print(f"{mode:9s} {figures['median_seconds']:.2f} s  x{figures['ratio_to_maskclip']:.2f}  "
              f"{figures['tower_gflop_two_windows']:.0f} GFLOP")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
