"""Inference figures: where ``Segmenter.predict``'s time goes, against open_clip's ``encode_image`` and
against the hardware's own matrix-product speed; text encoding; bf16; scaling with size and classes.

    python benchmarks/inference_bench.py --clip RN50 [--device cuda] [--quick]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import open_clip
import torch
from common import (
    Section,
    Settings,
    build_model,
    median,
    random_clip,
    scene,
    segmenter,
    share_text,
    synchronize,
    timed,
    vocabulary,
)
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import mvpseg
from mvpseg.inference import Segmenter
from mvpseg.runtime import autocast
from mvpseg.windows import pad_to_cells

#: The two inference cases of the issue: (name, (height, width), classes).
CASES = (("512x683_20", (512, 683), 20), ("2048x2048_171", (2048, 2048), 171))

#: predict's phases, in the order the report lists them.
PHASES = ("image_tower", "head_matching", "text_lookup", "resize", "upsample", "other")


class PhaseTimer:
    """Times the phases of :meth:`Segmenter.predict` by wrapping the instance's methods.

    ``predict`` calls ``resize``, ``predict_torch`` (which calls ``text_embeddings`` and, per window
    batch, ``features``: the image tower) and ``upsample_log_scores``; the head, the cosine maps and the
    stitching are what ``predict_torch`` spends outside the tower and the text lookup.
    """

    def __init__(self, seg: Segmenter) -> None:
        self.seg, self.device = seg, seg.device
        self.seconds: dict[str, float] = defaultdict(float)
        self.count_flops, self.flops = False, 0  # count the tower's FLOPs (a warm-up run) instead of timing
        self.wrapped: list[tuple[Any, str]] = [
            (seg, name) for name in ("features", "resize", "predict_torch", "upsample_log_scores", "text_embeddings")]
        for owner, name in self.wrapped:
            setattr(owner, name, self._wrap(name, getattr(owner, name)))

    def _wrap(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if name == "features" and self.count_flops:
                with counting_flops() as counter:
                    result = method(*args, **kwargs)
                self.flops += counter.get_total_flops()
                return result
            seconds, result = timed(lambda: method(*args, **kwargs), self.device)
            self.seconds[name] += seconds
            return result

        return wrapper

    def remove(self) -> None:
        """Put the original methods back."""
        for owner, name in self.wrapped:
            delattr(owner, name)

    def predict(self, image: np.ndarray, names: list[str]) -> tuple[dict[str, float], mvpseg.Prediction]:
        """One timed ``predict``: seconds per phase and in total."""
        self.seconds.clear()
        total, prediction = timed(lambda: self.seg.predict(image, names), self.device)
        seconds = self.seconds
        phases = {
            "image_tower": seconds["features"],
            "text_lookup": seconds["text_embeddings"],
            "head_matching": seconds["predict_torch"] - seconds["features"] - seconds["text_embeddings"],
            "resize": seconds["resize"],
            "upsample": seconds["upsample_log_scores"],
        }
        phases["other"] = total - seconds["predict_torch"] - seconds["resize"] - seconds["upsample_log_scores"]
        phases["total"] = total
        return phases, prediction


@contextmanager
def counting_flops() -> Iterator[FlopCounterMode]:
    """``FlopCounterMode`` over plain operations: the counter has no formula for the fused attention
    kernels (nn.MultiheadAttention's inference fast path, the CPU flash attention), so they are
    switched off while counting and attention runs as matrix products."""
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    counter = FlopCounterMode(display=False)
    try:
        with sdpa_kernel(SDPBackend.MATH), counter:
            yield counter
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def window_batches(seg: Segmenter, image: np.ndarray) -> list[torch.Tensor]:
    """The crops ``predict`` feeds the image tower, batched as it batches them: normalised (G, 3, h', w')."""
    padded = pad_to_cells(seg.resize(image), seg.feature_stride)  # (1, 3, H, W)
    boxes = seg.config.window_boxes(padded.shape[-2], padded.shape[-1], seg.feature_stride)
    if len({(y1 - y0, x1 - x0) for y0, y1, x0, x1 in boxes}) > 1:
        raise ValueError("windows of several sizes: no fixed-size reference model fits")
    step = seg.config.batch_size
    return [torch.cat([padded[..., y0:y1, x0:x1] for y0, y1, x0, x1 in boxes[start : start + step]])
            for start in range(0, len(boxes), step)]


def reference_model(name: str, crop_size: int, device: torch.device) -> torch.nn.Module:
    """open_clip's own model for ``crop_size`` inputs (positional embeddings sized for them), random weights."""
    torch.manual_seed(1)
    model = open_clip.create_model(name, pretrained=None, force_image_size=crop_size, device=device)
    return model.eval().requires_grad_(False)


def inference_case(seg: Segmenter, reference: torch.nn.Module, image: np.ndarray, names: list[str],
                   settings: Settings, matmul_dtype: torch.dtype) -> dict[str, Any]:
    """predict's phases, the reference ``encode_image`` on the same crops, and the derived ratios.

    Runs alternate (predict, reference, matrix product, predict, ...) so that the machine's load
    affects all alike. The first warm-up run counts FLOPs (``torch.utils.flop_counter``) instead of
    being timed.
    """
    device = seg.device
    batches = window_batches(seg, image)
    timer = PhaseTimer(seg)
    reference_flops = 0
    size = 2048
    left = torch.randn(size, size, device=device, dtype=matmul_dtype)
    right = torch.randn(size, size, device=device, dtype=matmul_dtype)

    def run_reference() -> None:
        with torch.inference_mode(), autocast(seg.device, seg.config.precision):
            for batch in batches:
                reference.encode_image(batch)

    runs, reference_seconds, matmul = [], [], []
    for index in range(max(settings.warmup, 1) + settings.repeats):
        warm_up = index < max(settings.warmup, 1)
        timer.count_flops = index == 0
        phases, prediction = timer.predict(image, names)
        if index == 0:
            with counting_flops() as counter:
                run_reference()
            reference_flops = counter.get_total_flops()
            left @ right
            continue
        seconds, _ = timed(run_reference, device)
        product_seconds, _ = timed(lambda: left @ right, device)
        if not warm_up:
            runs.append(phases)
            reference_seconds.append(seconds)
            matmul.append(2 * size**3 / product_seconds)
    timer.remove()
    flops = timer.flops
    phases = {key: median([run[key] for run in runs]) for key in runs[0]}
    matmul_speed = median(matmul)
    return {
        "image": list(image.shape[:2]),
        "classes": len(names),
        "windows": sum(len(batch) for batch in batches),
        "crop": list(batches[0].shape[-2:]),
        "runs": len(runs),
        "predict_seconds": phases,
        "predict_runs": [round(run["total"], 4) for run in runs],
        "encode_image_seconds": median(reference_seconds),
        "encode_image_runs": [round(value, 4) for value in reference_seconds],
        "overhead_ratio": phases["total"] / median(reference_seconds),
        "tower_gflop": flops / 1e9,
        "encode_image_gflop": reference_flops / 1e9,
        "tower_gflops_per_second": flops / phases["image_tower"] / 1e9,
        "matmul_gflops_per_second": matmul_speed / 1e9,
        "hardware_ratio": flops / phases["image_tower"] / matmul_speed,
        "labels_found": int(len(np.unique(prediction.labels))),
    }


def text_encoding(seg: Segmenter, names: list[str], settings: Settings) -> dict[str, float]:
    """The first ``text_embeddings`` call for a vocabulary (the text tower runs) against cached calls."""
    seg.clear_text_cache()
    first, _ = timed(lambda: seg.text_embeddings(names), seg.device)
    cached = [timed(lambda: seg.text_embeddings(names), seg.device)[0] for _ in range(max(settings.repeats, 3))]
    return {"classes": len(names), "first_call_seconds": first, "cached_call_seconds": median(cached)}


def precision_comparison(clip: mvpseg.ClipBundle, model: mvpseg.MVPSeg, source: Segmenter, image: np.ndarray,
                         names: list[str], precision: str, settings: Settings) -> dict[str, Any]:
    """Speed of ``precision`` against fp32 and the share of pixels whose label is the same.

    Both use the same (fp32) text embeddings from ``source``, so only the image side's precision differs.
    """
    device = source.device
    fp32 = segmenter(clip, model, device, precision="fp32")
    low = segmenter(clip, model, device, precision=precision)
    share_text(fp32, source, names)
    share_text(low, source, names)
    repeats = 1 if settings.quick else 2  # bf16 without hardware support is slow: few runs
    warmup = 0 if settings.quick and device.type == "cpu" else settings.warmup
    fp32_seconds, low_seconds = [], []
    reference = low_labels = None
    for index in range(warmup + repeats):
        seconds, reference = timed(lambda: fp32.predict(image, names), device)
        if index >= warmup:
            fp32_seconds.append(seconds)
        seconds, low_labels = timed(lambda: low.predict(image, names), device)
        if index >= warmup:
            low_seconds.append(seconds)
    assert reference is not None and low_labels is not None
    agreement = float((reference.labels == low_labels.labels).mean() * 100)
    return {"precision": precision, "image": list(image.shape[:2]), "classes": len(names), "runs": repeats,
            "warmup": warmup, "fp32_seconds": median(fp32_seconds), "seconds": median(low_seconds),
            "speedup": median(fp32_seconds) / median(low_seconds), "label_agreement_percent": agreement}


def scaling(seg: Segmenter, settings: Settings, sides: list[int], classes: list[int], side_classes: int,
            classes_side: int) -> dict[str, list[dict[str, Any]]]:
    """predict's time against the image side (``side_classes`` classes) and the number of classes
    (a ``classes_side`` square image). Text embeddings are taken from the cached 171-class vocabulary."""
    timer = PhaseTimer(seg)
    repeats = 1 if settings.quick else 3

    def point(side: int, count: int) -> dict[str, Any]:
        names = vocabulary(171)[:count]
        share_text(seg, seg, names)
        image = scene(side, side, seed=side)
        runs = [timer.predict(image, names)[0] for _ in range(settings.warmup + repeats)][settings.warmup :]
        return {"side": side, "classes": count, "runs": repeats,
                "seconds": {key: median([run[key] for run in runs]) for key in runs[0]}}

    try:
        by_side = [point(side, side_classes) for side in sides]
        by_classes = [point(classes_side, count) for count in classes]
    finally:
        timer.remove()
    return {"by_side": by_side, "by_classes": by_classes}


def run(name: str, settings: Settings, section: Section, full_figures: bool = True,
        stash: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every inference figure of one CLIP.

    Args:
        name: open_clip architecture.
        settings: device, quick mode, repeats.
        section: records each part's duration and load.
        full_figures: also the 171-class case, bf16 and the scaling curves (quick mode gives them
            for RN50 only).
        stash: receives the CLIP and the 171-class text embeddings, for the memory cases.
    """
    device = settings.device
    result: dict[str, Any] = {"clip": name}
    with section(f"{name}: load"):
        clip = random_clip(name, device)
        model = build_model(clip)
        seg = segmenter(clip, model, device)
    # The matrix product runs in the precision the tower runs in (fp16 autocast on CUDA by default).
    dtype = torch.float16 if device.type == "cuda" and seg.config.precision in ("auto", "fp16") else torch.float32
    result["matmul_dtype"] = str(dtype).replace("torch.", "")
    with section(f"{name}: text encoding"):
        result["text"] = [text_encoding(seg, vocabulary(20), settings)]
        if full_figures:
            result["text"].append(text_encoding(seg, vocabulary(171), settings))
    reference = reference_model(name, seg.config.crop_size, device)
    result["cases"] = {}
    for case, shape, count in CASES:
        if count == 171 and not full_figures:
            continue
        with section(f"{name}: predict {case}"):
            result["cases"][case] = inference_case(seg, reference, scene(*shape, seed=1), vocabulary(count),
                                                   settings, dtype)
    del reference
    if stash is not None:
        stash.update(clip=clip, text=seg.text_embeddings(vocabulary(171)) if full_figures else None)
    if full_figures:
        result["precision"] = []
        for precision in ("bf16",) if device.type == "cpu" else ("fp16", "bf16"):
            with section(f"{name}: {precision}"):
                result["precision"].append(precision_comparison(clip, model, seg, scene(512, 683, seed=1),
                                                                vocabulary(20), precision, settings))
        with section(f"{name}: scaling"):
            sides = [256, 1024, 4096] if settings.quick else [256, 512, 1024, 2048, 4096]
            counts = [5, 40, 171] if settings.quick else [5, 20, 60, 120, 171]
            result["scaling"] = scaling(seg, settings, sides, counts, side_classes=171, classes_side=2048)
    synchronize(device)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", default="RN50")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    settings = Settings.create(args.device, args.quick, args.threads)
    print(json.dumps(run(args.clip, settings, Section()), indent=2))


if __name__ == "__main__":
    main()
