"""Training speed of MVP-SEG (iterations per second) on synthetic data in the VOC layout.

Random CLIP weights (speed does not depend on their values). Writes a JSON line per run to
benchmarks/results/train_speed.jsonl and prints it.

    python benchmarks/train_speed.py --clip RN50 --batch-size 4 --crop-size 512 --iters 6
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mvpseg.model import MVPSegConfig
from mvpseg.train import TrainConfig, train


def write_voc_like(root: Path, count: int, size: tuple[int, int], seed: int = 0) -> Path:
    """A small VOC2012 layout with random rectangles of the 20 classes (labels 1..20, 0 background)."""
    base = root / "VOCdevkit" / "VOC2012"
    rng = np.random.default_rng(seed)
    ids = [f"2007_{i:06d}" for i in range(count)]
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / folder).mkdir(parents=True, exist_ok=True)
    for name in ids:
        label = np.zeros(size, np.uint8)
        for _ in range(6):
            y, x = rng.integers(0, size[0] - 32), rng.integers(0, size[1] - 32)
            label[y : y + rng.integers(32, size[0] // 2), x : x + rng.integers(32, size[1] // 2)] = rng.integers(1, 21)
        image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(image).save(base / "JPEGImages" / f"{name}.jpg")
        Image.fromarray(label, mode="L").save(base / "SegmentationClass" / f"{name}.png")
    (base / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids) + "\n")
    (base / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids[:2]) + "\n")
    return base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", default="RN50")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--crop-size", type=int, default=512)
    parser.add_argument("--iters", type=int, default=6, help="timed steps (after one untimed warm-up step)")
    parser.add_argument("--num-prompts", type=int, default=3)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--device", default=None)
    parser.add_argument("--num-workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = write_voc_like(Path(tmp), count=16, size=(375, 500))
        def config(iters: int, out: str) -> TrainConfig:
            return TrainConfig(dataset="voc", data_root=str(root), clip=args.clip, pretrained=None, out=out,
                               model=MVPSegConfig(clip_name=args.clip, num_prompts=args.num_prompts),
                               iters=iters, batch_size=args.batch_size, crop_size=args.crop_size,
                               num_workers=args.num_workers, precision=args.precision, device=args.device,
                               checkpoint_every=10**9, log_every=1)
        train(config(args.iters + 1, f"{tmp}/timed"), progress=False)
        with open(f"{tmp}/timed/log.csv") as handle:
            elapsed = [float(row["seconds"]) for row in csv.DictReader(handle)]
        seconds = elapsed[-1] - elapsed[0]  # steps 2..N: the first step (warm-up) is excluded
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    result = {
        "benchmark": "train_speed", "clip": args.clip, "batch_size": args.batch_size, "crop_size": args.crop_size,
        "num_prompts": args.num_prompts, "precision": args.precision, "iters": args.iters,
        "seconds": round(seconds, 2), "iters_per_second": round(args.iters / seconds, 4),
        "note": "steady-state steps: data loading, forward, backward, optimiser; first step excluded",
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "torch": torch.__version__, "python": sys.version.split()[0],
    }
    line = json.dumps(result)
    print(line)
    out = Path(__file__).parent / "results" / "train_speed.jsonl"
    out.parent.mkdir(exist_ok=True)
    with out.open("a") as handle:
        handle.write(line + "\n")


if __name__ == "__main__":
    main()
