"""Where mvpseg and a repository's own code part on one image: their cosine maps (before the logit scale and softmax)
compared pixel by pixel, on test weights whose attention is peaked by a chosen factor.

The companion of ``protocols_vs_authors.py`` (whose machinery, weights and images it reuses): that study compares
probabilities; this one finds where a difference sits and how it grows with the peaking of the test weights. A
difference spread over the whole image that shrinks as the attention logits shrink is float32 rounding amplified by
sharp attention; one confined to a few windows that does not is a discrete step of the method (a ranking, a threshold)
tipped the other way.

    python benchmarks/studies/protocol_gap.py --protocol clearclip --vit-mode qk --peaks 4 2 1 \\
        --out benchmarks/results/protocol_gap.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
import protocols_vs_authors as pva  # noqa: E402

import mvpseg.inference as inference  # noqa: E402


def gap(protocol: str, benchmark: str, image_name: str, vit_mode: str | None, pamr_steps: int, peak: float,
        seed: int) -> dict[str, Any]:
    """Both sides' cosine maps of one image under the protocol, and how they differ."""
    kept: list[torch.Tensor] = []
    scored = inference.refined_probabilities

    def keep(maps: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        kept.append(maps.clone())  # (1, N, H, W): mvpseg's upsampled cosines
        return scored(maps, *args, **kwargs)

    inference.refined_probabilities = keep
    try:
        with tempfile.TemporaryDirectory() as scratch:
            workdir = Path(scratch)
            weights = workdir / "weights.pt"
            pva.register_architecture(workdir)
            pva.random_weights(weights, peak, seed)
            image = pva.test_images(seed)[image_name]
            theirs = pva.run_repository(protocol, benchmark, weights, [image], workdir, pamr_steps, vit_mode,
                                        keep_cosines=True)
            ours = pva.run_mvpseg(protocol, benchmark, weights, [image], workdir, pamr_steps, vit_mode)
    finally:
        inference.refined_probabilities = scored
    difference = (theirs[0]["cosines"] - kept[0][0]).abs().amax(dim=0)  # (H, W): the worst name per pixel
    row: dict[str, Any] = {"protocol": protocol, "benchmark": benchmark, "image": image_name, "vit_mode": vit_mode,
                           "pamr_steps": pamr_steps, "peak": peak, "seed": seed,
                           "max_cosine_diff": float(difference.max()), "mean_cosine_diff": float(difference.mean()),
                           "max_probability_diff": float(np.abs(theirs[0]["probabilities"] -
                                                                ours[0]["probabilities"]).max())}
    for threshold in (1e-5, 1e-4):  # where the larger differences sit: pixel count and bounding box (rows, columns)
        rows, cols = torch.nonzero(difference > threshold, as_tuple=True)
        row[f"pixels_above_{threshold:.0e}"] = int(len(rows))
        if len(rows):
            row[f"box_above_{threshold:.0e}"] = [int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocol", required=True)
    parser.add_argument("--benchmark", default="cityscapes")
    parser.add_argument("--image", default="cityscapes-2048x1024")
    parser.add_argument("--vit-mode", default=None)
    parser.add_argument("--pamr", type=int, default=0)
    parser.add_argument("--peaks", nargs="+", type=float, default=[4.0, 2.0, 1.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    pva.stand_ins()
    torch.set_grad_enabled(False)
    from cpuinfo import cpu_summary  # type: ignore[import-not-found]

    earlier = json.loads(args.out.read_text()) if args.out.exists() else {"commands": [], "rows": []}
    for peak in args.peaks:
        row = gap(args.protocol, args.benchmark, args.image, args.vit_mode, args.pamr, peak, args.seed)
        print(json.dumps(row), flush=True)
        earlier["rows"].append(row)
        earlier.update(cpu=cpu_summary(), torch=torch.__version__)
        args.out.write_text(json.dumps(earlier, indent=2) + "\n")
    earlier["commands"].append(" ".join(sys.argv))
    args.out.write_text(json.dumps(earlier, indent=2) + "\n")


if __name__ == "__main__":
    main()
