"""What PAMR costs: seconds and peak memory of mvpseg.pamr at a VOC photo's size and a Cityscapes frame's.

::

    python benchmarks/pamr_bench.py --json benchmarks/results/pamr.json

Each case runs in a fresh process (peak resident memory is per process): 10 steps, dilations (8, 16)
(NACLIP's settings), random scores of 21 classes on 500x375 and of 19 on 2048x1024, the image and scores
already at that size, fp32, on the CPU (and on CUDA when there is one). Beside it the same refinement with
every neighbour materialised at once, (B, C, P, H, W), as NACLIP's module computes it, for the memory
this implementation saves. Peak memory is the process's maximum resident set less the resident set after
the inputs were made (CPU), or torch's peak allocation (CUDA).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpuinfo import cpu_summary  # noqa: E402

CASE = r"""
import json, resource, sys, time, torch
import torch.nn.functional as F
from mvpseg.pamr import pamr, affinities
height, width, classes, variant, device = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
torch.manual_seed(0)
image = torch.randn(1, 3, height, width, device=device)
scores = torch.randn(1, classes, height, width, device=device)

def materialised(image, scores, steps=10, dilations=(8, 16)):
    pad = max(dilations)
    offsets = [(dy * d, dx * d) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    weights = affinities(image, dilations).unsqueeze(1)  # (B, 1, P, H, W)
    for _ in range(steps):
        padded = F.pad(scores, [pad] * 4, mode="replicate")
        stack = torch.stack([padded[..., pad + dy : pad + dy + height, pad + dx : pad + dx + width]
                             for dy, dx in offsets], dim=2)  # (B, C, P, H, W)
        scores = (stack * weights).sum(dim=2)
    return scores

run = pamr if variant == "mvpseg" else materialised
if device == "cuda":
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
else:
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
times = []
for _ in range(3):
    tic = time.perf_counter()
    out = run(image, scores)
    if device == "cuda":
        torch.cuda.synchronize()
    times.append(time.perf_counter() - tic)
peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if device == "cuda" else \
    (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
print(json.dumps({"seconds_min": min(times), "seconds_median": sorted(times)[1], "peak_mib": round(peak, 1)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results = {"cpu": cpu_summary(), "threads": torch.get_num_threads(), "torch": torch.__version__, "cases": []}
    for device in devices:
        for height, width, classes in ((375, 500, 21), (1024, 2048, 19)):
            for variant in ("mvpseg", "materialised"):
                out = subprocess.run([sys.executable, "-c", CASE, str(height), str(width), str(classes), variant,
                                      device], capture_output=True, text=True, check=True)
                row = {"device": device, "size": f"{width}x{height}", "classes": classes, "variant": variant,
                       **json.loads(out.stdout.strip().splitlines()[-1])}
                results["cases"].append(row)
                print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
