"""The benchmark runner's images/s at SCLIP's protocol against the peers' one-window-at-a-time ``forward_slide``.

::

    python benchmarks/benchmark_speed.py                       # benchmarks/results/benchmark_speed.json
    python benchmarks/benchmark_speed.py --images 2 --rounds 1 --out /tmp/check.json   # a check in a minute

ViT-B/16 with random weights (speed does not depend on the values), SCLIP's dense mode (``csa``) and SCLIP's
scale: mmcv's keep-ratio resize to (2048, 336) (a 500x375 VOC photo becomes 448x336), 224-px windows with
stride 112, the windows' cosines upsampled to their pixels and averaged there (``stitch="pixels"``), 21 classes.
Two paths segment the same random 500x375 images in the same rounds, alternating, so that the machine's load
falls on both alike:

- **mvpseg**: ``Segmenter.predict``, as ``mvpseg benchmark`` (``mvpseg.evaluate.accumulate``) calls it per image;
- **reference**: the loop of SCLIP's ``forward_slide`` (and of NACLIP, ClearCLIP, ResCLIP, SC-CLIP, which copy it),
  written here: for each window in turn, features -> cosines -> bilinear upsample to the window -> padded to the
  image and added, counts added; then divided, upsampled to the photo's size, argmax.

Both start from the same resized, normalised image (``Segmenter.resize``) and the same text embeddings (random,
cached: the text tower runs once per benchmark, not per image), so the figures compare the image side alone.
The labels' agreement between the two is recorded too (the peers' loop and ``stitch="pixels"`` compute the same
map, up to where the windows are cut). Peak memory: one Cityscapes frame (2048x1024, short side 560: 1120x560,
36 windows, 19 classes), each path in a fresh process (the CPU's peak resident set less the set before
the image, or torch's peak allocation on CUDA).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpuinfo import cpu_summary  # noqa: E402

from mvpseg.build import build_mvpseg  # noqa: E402
from mvpseg.clip import load_clip  # noqa: E402
from mvpseg.config import InferenceConfig  # noqa: E402
from mvpseg.files import write_text  # noqa: E402
from mvpseg.inference import Segmenter  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "benchmark_speed.json"
#: SCLIP's settings for VOC (configs/cfg_voc21.py: Resize(scale=(2048, 336), keep_ratio=True), slide 224 / 112).
SCLIP_SETTINGS: dict[str, Any] = {"short_side": 336, "resize_cap": 2048, "resize_filter": "cv2", "mode": "slide",
                                  "crop_size": 224, "stride": 112, "stitch": "pixels", "precision": "fp32"}
#: Cityscapes at SCLIP's scale: Resize(scale=(2048, 560), keep_ratio=True).
CITYSCAPES: dict[str, Any] = {**SCLIP_SETTINGS, "short_side": 560}


def segmenter(device: str, settings: dict[str, Any], classes: int, seed: int = 0) -> tuple[Segmenter, list[str]]:
    """ViT-B/16 with random weights in SCLIP's mode, and ``classes`` names whose text embeddings are cached (random)."""
    torch.manual_seed(seed)
    clip = load_clip("ViT-B-16", pretrained=None, device=device)
    model = build_mvpseg(clip, None, vit_mode="csa")
    runner = Segmenter(model, InferenceConfig(**settings), device=device)
    names = [f"class {index}" for index in range(classes)]
    dim = clip.model.text_projection.shape[1]  # D, the joint embedding's size
    text = F.normalize(torch.randn(1, classes, dim, generator=torch.Generator().manual_seed(seed)), dim=-1)  # (1, C, D)
    runner.cache_text_embeddings(names, text)
    return runner, names


@torch.inference_mode()
def forward_slide(runner: Segmenter, image: np.ndarray, text: torch.Tensor) -> np.ndarray:
    """The peers' sliding-window inference, one window at a time: (H, W) int64 labels of an HWC uint8 image.

    ``text`` (C, D) L2-normalised class embeddings; the image is resized and normalised as the runner does it.
    """
    resized = runner.resize(image)  # (1, 3, H', W') normalised
    crop, stride = runner.config.crop_size, runner.config.window_stride
    _, _, height, width = resized.shape
    rows = max(height - crop + stride - 1, 0) // stride + 1
    cols = max(width - crop + stride - 1, 0) // stride + 1
    preds = resized.new_zeros((1, text.shape[0], height, width))  # (1, C, H', W')
    counts = resized.new_zeros((1, 1, height, width))
    for row in range(rows):
        for col in range(cols):
            y1, x1 = row * stride, col * stride
            y2, x2 = min(y1 + crop, height), min(x1 + crop, width)
            y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
            window = resized[:, :, y1:y2, x1:x2]
            features = runner.features(window)  # (1, D, h, w), L2-normalised
            cosines = torch.einsum("bdhw,cd->bchw", features.float(), text)  # (1, C, h, w)
            cosines = F.interpolate(cosines, size=window.shape[-2:], mode="bilinear")  # to the window's pixels
            preds += F.pad(cosines, (x1, width - x2, y1, height - y2))  # as SCLIP adds it: padded to the image
            counts[:, :, y1:y2, x1:x2] += 1
    logits = F.interpolate(preds / counts, size=image.shape[:2], mode="bilinear")  # (1, C, H, W)
    return logits[0].argmax(dim=0).cpu().numpy()


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def pixels_stitch_honoured(runner: Segmenter, names: list[str], image: np.ndarray) -> bool:
    """Whether ``stitch="pixels"`` changes what the Segmenter computes (False: the field is declared, not applied)."""
    cells = Segmenter(runner.model, InferenceConfig(**{**SCLIP_SETTINGS, "stitch": "cells"}), device=runner.device)
    cells.cache_text_embeddings(names, runner.text_embeddings(names))
    a = runner.predict(image, names, return_scores=True).scores
    b = cells.predict(image, names, return_scores=True).scores
    return a is not None and b is not None and not np.array_equal(a, b)


def speed(args: argparse.Namespace) -> dict[str, Any]:
    runner, names = segmenter(args.device, SCLIP_SETTINGS, classes=21)
    text = runner.text_embeddings(names)[0]  # (C, D)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (375, 500, 3), dtype=np.uint8) for _ in range(args.images)]
    honoured = pixels_stitch_honoured(runner, names, images[0])
    runner.predict(images[0], names)  # warm-up of both paths
    forward_slide(runner, images[0], text)
    seconds: dict[str, list[float]] = {"mvpseg": [], "reference": []}
    agreement = []
    for round_index in range(args.rounds):
        for index, image in enumerate(images):
            order = ["mvpseg", "reference"] if (round_index + index) % 2 == 0 else ["reference", "mvpseg"]
            labels = {}
            for path in order:
                synchronize(args.device)
                tic = time.perf_counter()
                labels[path] = (runner.predict(image, names).labels if path == "mvpseg"
                                else forward_slide(runner, image, text))
                synchronize(args.device)
                seconds[path].append(time.perf_counter() - tic)
            agreement.append(float((labels["mvpseg"] == labels["reference"]).mean()))
    rate = {path: len(times) / sum(times) for path, times in seconds.items()}
    return {"images": args.images, "rounds": args.rounds, "image_size": "500x375", "classes": len(names),
            "settings": SCLIP_SETTINGS, "vit_mode": "csa", "stitch_pixels_honoured": honoured,
            "images_per_second": {path: round(value, 3) for path, value in rate.items()},
            "median_seconds": {path: round(statistics.median(times), 4) for path, times in seconds.items()},
            "speedup": round(rate["mvpseg"] / rate["reference"], 3),
            "label_agreement_mean": round(statistics.mean(agreement), 5)}


def memory_case(path: str, device: str) -> dict[str, Any]:
    """Peak memory of one Cityscapes frame by one path (run in a fresh process)."""
    import resource

    runner, names = segmenter(device, CITYSCAPES, classes=19)
    text = runner.text_embeddings(names)[0]
    image = np.random.default_rng(1).integers(0, 256, (1024, 2048, 3), dtype=np.uint8)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tic = time.perf_counter()
    runner.predict(image, names) if path == "mvpseg" else forward_slide(runner, image, text)
    synchronize(device)
    elapsed = time.perf_counter() - tic
    peak = ((torch.cuda.max_memory_allocated() - base) / 2**20 if device.startswith("cuda")
            else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
    return {"path": path, "seconds": round(elapsed, 3), "peak_mib_above_model": round(peak, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20, help="random 500x375 images per round (default 20)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over the images (default 2)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-memory", action="store_true", help="skip the Cityscapes-frame memory cases")
    parser.add_argument("--memory-case", choices=("mvpseg", "reference"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_case:  # the child of a memory case: one JSON line
        print(json.dumps(memory_case(args.memory_case, args.device)))
        return
    started = time.time()
    results: dict[str, Any] = {"cpu": cpu_summary(), "device": args.device, "torch": torch.__version__,
                               "threads": torch.get_num_threads(), "clip": "ViT-B-16 (random weights)"}
    if args.device.startswith("cuda"):
        results["gpu"] = torch.cuda.get_device_name()
    results["speed"] = speed(args)
    print(json.dumps(results["speed"]), flush=True)
    if not args.no_memory:
        results["cityscapes_memory"] = {"image_size": "2048x1024", "resized": "1120x560", "settings": CITYSCAPES,
                                        "classes": 19, "cases": []}
        for path in ("mvpseg", "reference"):
            command = [sys.executable, __file__, "--memory-case", path, "--device", args.device]
            if args.threads:
                command += ["--threads", str(args.threads)]
            out = subprocess.run(command, capture_output=True, text=True, check=True)
            case = json.loads(out.stdout.strip().splitlines()[-1])
            results["cityscapes_memory"]["cases"].append(case)
            print(json.dumps(case), flush=True)
    results["wall_seconds"] = round(time.time() - started, 1)
    write_text(args.out, json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
