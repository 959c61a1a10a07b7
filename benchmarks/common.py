"""Shared pieces of the benchmarks: timing, machine description, synthetic scenes, random CLIPs.

Speed does not depend on CLIP's weight values, so every benchmark runs on random weights
(no pretrained CLIP is needed). One thing does depend on the values: how varied the dense features
are. A freshly initialised ResNet gives nearly the same feature at every location (mean cosine
0.996 between locations on a synthetic scene), so every pixel would get the same label, and
whatever depends on the label map (pruned upsampling, label agreement of bf16) would be measured on
a degenerate case. :func:`calibrate_batchnorm` sets the ResNet's BatchNorm statistics from one
synthetic scene, as in a trained network, which brings the mean cosine to about 0.35 (random ViTs
are already at about 0.16).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import open_clip
import torch
from cpuinfo import cpu_flags, cpu_name
from PIL import Image, ImageDraw
from torch import nn

import mvpseg
from mvpseg.data.classes import COCO_STUFF_CLASSES, VOC_CLASSES
from mvpseg.inference import InferenceConfig, Segmenter

#: The two CLIPs every figure is given for.
CLIPS = ("RN50", "ViT-B-16")


@dataclass
class Settings:
    """How much to measure: ``--quick`` trades repeats and curve points for a run of a few minutes."""

    device: torch.device
    quick: bool
    warmup: int = 1  # untimed runs before the timed ones
    repeats: int = 5  # timed runs; every figure is their median
    notes: list[str] = field(default_factory=list)  # remarks collected for the report

    @classmethod
    def create(cls, device: str, quick: bool, threads: int | None = None) -> Settings:
        """Settings for a run; ``threads`` sets torch's intra-op threads (None keeps torch's default)."""
        if threads is not None:
            torch.set_num_threads(threads)
        return cls(device=torch.device(device), quick=quick, warmup=1, repeats=2 if quick else 5)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that wall-clock times cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Seconds one call of ``function`` takes (GPU work included), and its result."""
    synchronize(device)
    start = time.perf_counter()
    result = function()
    synchronize(device)
    return time.perf_counter() - start, result


def measure(function: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Seconds of ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        function()
    return [timed(function, device)[0] for _ in range(repeats)]


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def load_average() -> list[float]:
    """1, 5 and 15-minute load averages (runnable processes per core needed: compare with the cores)."""
    return [round(value, 2) for value in os.getloadavg()]


class Section:
    """Collects the load average at the start and end of each benchmark section, and its duration."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start, load = time.perf_counter(), load_average()
        print(f"[{time.strftime('%H:%M:%S')}] {name} (load {load[0]})", flush=True)
        yield
        self.records[name] = {"seconds": round(time.perf_counter() - start, 1), "load_start": load,
                              "load_end": load_average()}






def machine(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on."""
    flags = cpu_flags()
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    info: dict[str, Any] = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "memory_gib": round(memory_gib, 1),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx": "amx_tile" in flags,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "load_average_at_start": load_average(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def scene(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A synthetic photo: ellipses of flat colours over a background, with mild noise. HWC uint8."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(14):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(0.05, 0.3) * height, rng.uniform(0.05, 0.3) * width
        draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    array = np.array(image, dtype=np.uint8)
    del image, draw
    noise = rng.integers(-8, 9, (min(height, 64), min(width, 64), 3), dtype=np.int16)  # tiled: cheap at any size
    row_of_tiles = np.tile(noise, (1, -(-width // noise.shape[1]), 1))[:, :width]  # (64, W, 3)
    for top in range(0, height, noise.shape[0]):  # a strip at a time: no full-size temporaries
        strip = array[top : top + noise.shape[0]]
        strip[:] = np.clip(strip.astype(np.int16) + row_of_tiles[: len(strip)], 0, 255)
    return array


def vocabulary(size: int) -> list[str]:
    """``size`` readable class names: VOC's 20 when 20, else the first ``size`` of COCO-Stuff's 171."""
    if size == 20:
        return [name for name in VOC_CLASSES if name != "background"][:20]
    if size > len(COCO_STUFF_CLASSES):
        raise ValueError(f"at most {len(COCO_STUFF_CLASSES)} classes")
    return list(COCO_STUFF_CLASSES[:size])


def normalise(clip: mvpseg.ClipBundle, image: np.ndarray, device: torch.device) -> torch.Tensor:
    """HWC uint8 -> (1, 3, H, W) float normalised with CLIP's mean and std."""
    tensor = torch.from_numpy(image).to(device).permute(2, 0, 1)[None].float() / 255.0
    mean = torch.tensor(clip.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(clip.std, device=device).view(1, 3, 1, 1)
    return (tensor - mean) / std


@torch.no_grad()
def calibrate_batchnorm(clip: mvpseg.ClipBundle, image: np.ndarray, device: torch.device) -> None:
    """Set a ResNet tower's BatchNorm statistics from one image (see the module docstring)."""
    norms = [module for module in clip.model.visual.modules() if isinstance(module, nn.BatchNorm2d)]
    if not norms:
        return
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average: one batch sets the statistics
        norm.train()
    mvpseg.dense_features(clip.model, normalise(clip, image, device))
    for norm in norms:
        norm.eval()


def random_clip(name: str, device: torch.device, seed: int = 0) -> mvpseg.ClipBundle:
    """A CLIP with random weights (BatchNorm statistics calibrated for ResNets), frozen, on ``device``."""
    torch.manual_seed(seed)
    clip = mvpseg.load_clip(name, None, device=device)
    calibrate_batchnorm(clip, scene(512, 512, seed=99), device)
    return clip


def build_model(clip: mvpseg.ClipBundle, num_prompts: int = 3, seed: int = 0) -> mvpseg.MVPSeg:
    """MVP-SEG with K learned (here: randomly initialised) prompts and GPR, as trained models are."""
    config = mvpseg.MVPSegConfig(num_prompts=num_prompts)
    return mvpseg.build_mvpseg(clip, config, generator=torch.Generator().manual_seed(seed))


def segmenter(clip: mvpseg.ClipBundle, model: mvpseg.MVPSeg, device: torch.device, **options: Any) -> Segmenter:
    return Segmenter(model, InferenceConfig(**options), device=device)


def share_text(target: Segmenter, source: Segmenter, names: list[str]) -> None:
    """Give ``target`` the text embeddings ``source`` has for ``names``: its rows of the 171-class vocabulary
    when ``names`` are among those classes, else the embeddings of ``names`` themselves.

    Each class's prompts are encoded independently (causal text tower), so the rows of a larger
    vocabulary are the embeddings of the smaller one; ``source`` runs its text tower at most once per
    vocabulary (its calls are cached).
    """
    everything = vocabulary(171)
    if set(names) <= set(everything):
        embeddings = source.text_embeddings(everything)[:, [everything.index(name) for name in names]]
    else:
        embeddings = source.text_embeddings(names)
    target.cache_text_embeddings(names, embeddings)


def matmul_flops_per_second(device: torch.device, size: int = 2048, repeats: int = 5,
                            dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of a large square matrix product: what the hardware gives a well-shaped workload."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    seconds = measure(lambda: a @ b, device, warmup=2, repeats=repeats)
    return 2 * size**3 / min(seconds)
