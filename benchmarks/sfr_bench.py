"""What ResCLIP's semantic feedback refinement (SFR) costs: seconds per image under ResCLIP's protocol, with SFR and
without it, on a random ViT-B/16 at a VOC photo's size.

::

    python benchmarks/sfr_bench.py --json benchmarks/results/sfr.json

Two settings of ``--protocol resclip``: VOC-21 (the whole 500x375 photo at 336x448: one window of 588 patches) and
Context-59 (224-px windows, stride 112: six windows), with 21 and 59 class names. SFR runs the last block twice and,
per window, PAMR over every name and the patch-pair matrix, so its cost grows with the names and the window. Random
weights: the time does not depend on them. One warm-up, then the median of three, fp32 on the CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, measure, median  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import numpy as np
    import torch

    import mvpseg
    from mvpseg.protocols import get_protocol
    from mvpseg.vocabulary import Vocabulary

    torch.manual_seed(0)
    device = torch.device("cpu")
    clip = mvpseg.load_clip("ViT-B-16", pretrained=None)
    model = mvpseg.build_mvpseg(clip, vit_mode="resclip")
    image = np.random.default_rng(0).integers(0, 256, (375, 500, 3), dtype=np.uint8)
    results = {"machine": machine(device), "cases": []}
    for benchmark, classes in (("voc21", 21), ("context59", 59)):
        vocabulary = Vocabulary.of([f"class {index}" for index in range(classes)])
        for sfr in (False, True):
            config = get_protocol("resclip", benchmark).inference_config(
                resize_filter="bilinear", dense={"resclip_sfr": sfr})
            segmenter = mvpseg.Segmenter(model, config, device=device)
            # one warm-up (which also caches the text embeddings), then the timed runs
            seconds = measure(partial(segmenter.probabilities, image, vocabulary), device, 1, args.repeats)
            row = {"protocol": f"resclip:{benchmark}", "classes": classes, "sfr": sfr,
                   "seconds_median": median(seconds), "seconds_min": min(seconds)}
            results["cases"].append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
