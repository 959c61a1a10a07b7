"""Training figures: where an MVP-SEG step's time goes (image tower, text tower forward and backward,
the rest), the speed-up of training from a feature cache, and the step time against K and classes.

The step is train.py's step (``model(images, names)``, ``total_loss``, backward, SGD), taken apart
so each part can be timed: the text embeddings are detached after the text tower, the loss is
back-propagated to them, then their gradient through the text tower. The gradients are those of the
joint backward. Data loading is not in these figures; ``--end-to-end`` also runs ``mvpseg.train``
itself on a synthetic VOC-like dataset (loader included), with and without the feature cache.

    python benchmarks/train_bench.py [--device cuda] [--quick] [--end-to-end]
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import Section, Settings, build_model, median, random_clip, scene, synchronize, timed, vocabulary
from PIL import Image

import mvpseg
from mvpseg.feature_cache import FeatureCache, build_feature_cache
from mvpseg.losses import LossWeights, labelled_weight, total_loss
from mvpseg.runtime import autocast
from mvpseg.train import TrainConfig, train

PARTS = ("image_tower", "cache_read", "text_forward", "head_loss_forward", "head_loss_backward",
         "text_backward", "optimizer")


def training_autocast(device: torch.device) -> Callable[[], AbstractContextManager[Any]]:
    """What ``TrainConfig(precision="auto")`` runs under (:func:`mvpseg.runtime.autocast`), as a factory."""
    return lambda: autocast(device, "auto")


def synthetic_batch(batch_size: int, crop: int, num_classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Crops of synthetic scenes, uint8 (B, 3, S, S), with labels int64 (B, S, S): ellipses of
    ``num_classes`` classes and some ignored (255) pixels."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for index in range(batch_size):
        images.append(torch.from_numpy(scene(crop, crop, seed=seed * 100 + index)).permute(2, 0, 1))
        label = np.full((crop, crop), rng.integers(num_classes), np.int64)
        ys, xs = np.ogrid[:crop, :crop]
        for _ in range(8):
            cy, cx, radius = rng.uniform(0, crop), rng.uniform(0, crop), rng.uniform(0.05, 0.3) * crop
            label[(ys - cy) ** 2 + (xs - cx) ** 2 < radius**2] = rng.integers(num_classes)
        label[: crop // 16] = 255  # an unlabelled strip, as datasets have
        labels.append(torch.from_numpy(label))
    return torch.stack(images), torch.stack(labels)


class Step:
    """One MVP-SEG training step, timed part by part (see the module docstring)."""

    def __init__(self, model: mvpseg.MVPSeg, clip: mvpseg.ClipBundle, names: list[str], device: torch.device,
                 autocast: Callable[[], AbstractContextManager[Any]] = nullcontext) -> None:
        self.model, self.names, self.device, self.autocast = model.train(), names, device, autocast
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(self.params, lr=2e-3, momentum=0.9, weight_decay=5e-4)
        self.mean = torch.tensor(clip.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(clip.std, device=device).view(1, 3, 1, 1)

    def __call__(self, labels: torch.Tensor, images: torch.Tensor | None = None,
                 read_features: Callable[[], torch.Tensor] | None = None) -> tuple[dict[str, float], float]:
        """Seconds per part and the loss. Give ``images`` (uint8) or ``read_features`` (a cache read)."""
        seconds: dict[str, float] = dict.fromkeys(PARTS, 0.0)
        model, device = self.model, self.device

        def part(name: str, function: Callable[[], Any]) -> Any:
            elapsed, result = timed(function, device)
            seconds[name] += elapsed
            return result

        labels = labels.to(device)
        normalizer = labelled_weight(labels)
        with self.autocast():
            if read_features is not None:
                features = part("cache_read", lambda: read_features().to(device).float())
            else:
                assert images is not None
                pixels = (images.to(device).float() / 255.0 - self.mean) / self.std
                features = part("image_tower", lambda: model.features(pixels))
            text = part("text_forward", lambda: model.text_embeddings(self.names))
            detached = text.detach().requires_grad_(True)

            def head_and_loss() -> dict[str, torch.Tensor]:
                output = model.segment_features(features, text=detached)
                mean_contexts = model.prompts.mean_contexts() if model.prompts is not None else None
                return total_loss(output, labels, mean_contexts, LossWeights(), seg_normalizer=normalizer)

            losses = part("head_loss_forward", head_and_loss)
        self.optimizer.zero_grad(set_to_none=False)
        part("head_loss_backward", lambda: losses["loss"].backward())
        part("text_backward", lambda: text.backward(detached.grad))
        part("optimizer", self.optimizer.step)
        seconds["total"] = sum(seconds.values())
        return seconds, float(losses["loss"].detach())


def run_steps(step: Step, settings: Settings, repeats: int | None = None, **inputs: Any) -> dict[str, Any]:
    """Median seconds per part over ``repeats`` steps after the warm-up."""
    repeats = repeats or settings.repeats
    runs, losses = [], []
    for index in range(settings.warmup + repeats):
        seconds, loss = step(**inputs)
        if index >= settings.warmup:
            runs.append(seconds)
            losses.append(loss)
    return {"runs": repeats, "seconds": {key: median([run[key] for run in runs]) for key in runs[0]},
            "step_runs": [round(run["total"], 4) for run in runs], "first_loss": losses[0]}


def feature_cache(folder: Path, clip: mvpseg.ClipBundle, images: torch.Tensor, labels: torch.Tensor,
                  device: torch.device) -> tuple[FeatureCache, float]:
    """A one-view cache of the batch's crops (as mvpseg.train builds it) and the seconds it took."""
    mean = torch.tensor(clip.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(clip.std, device=device).view(1, 3, 1, 1)
    seconds, cache = timed(lambda: build_feature_cache(
        folder, {"benchmark": True}, views=1, num_samples=len(images),
        load_view=lambda index, view: (images[index], labels[index]), clip_model=clip.model,
        normalize=lambda x: (x - mean) / std, device=device, batch_size=len(images), progress=False), device)
    return cache, seconds


def breakdown(clip: mvpseg.ClipBundle, settings: Settings, batch_size: int = 4, crop: int = 512,
              num_classes: int = 15, num_prompts: int = 3) -> dict[str, Any]:
    """The step of the issue (RN50, K=3, 15 seen classes, batch 4, crop 512), uncached and cached."""
    device = settings.device
    images, labels = synthetic_batch(batch_size, crop, num_classes)
    names = vocabulary(171)[:num_classes]
    autocast = training_autocast(device)
    step = Step(build_model(clip, num_prompts), clip, names, device, autocast)
    uncached = run_steps(step, settings, images=images, labels=labels)
    with tempfile.TemporaryDirectory() as folder:
        cache, build_seconds = feature_cache(Path(folder) / "cache", clip, images, labels, device)

        def read() -> torch.Tensor:
            return torch.stack([cache.get(index, 0)[0] for index in range(batch_size)])

        step = Step(build_model(clip, num_prompts), clip, names, device, autocast)  # same initial prompts
        cached = run_steps(step, settings, labels=labels, read_features=read)
    return {
        "batch_size": batch_size, "crop": crop, "classes": num_classes, "num_prompts": num_prompts,
        "precision": "fp32" if device.type != "cuda" else "autocast (TrainConfig precision auto)",
        "uncached": uncached, "cached": cached,
        "cache_build_seconds_per_view": build_seconds / batch_size,
        "loss_uncached": uncached["first_loss"], "loss_cached": cached["first_loss"],
        "train_cache_speedup": uncached["seconds"]["total"] / cached["seconds"]["total"],
    }


def scaling(clip: mvpseg.ClipBundle, settings: Settings, prompts: list[int], classes: list[int],
            batch_size: int = 4, crop: int = 512) -> dict[str, list[dict[str, Any]]]:
    """Cached-feature step time against K (15 classes) and against the classes (K=3).

    The image tower does not depend on K or the classes; the report adds its time (from
    :func:`breakdown`) for the uncached step.
    """
    device = settings.device
    images, labels = synthetic_batch(batch_size, crop, max(classes))
    with torch.no_grad():
        mean = torch.tensor(clip.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(clip.std, device=device).view(1, 3, 1, 1)
        features = mvpseg.dense_features(clip.model, (images.to(device).float() / 255.0 - mean) / std)
        features = torch.nn.functional.normalize(features.float(), dim=1)
    repeats = 1 if settings.quick else 3

    measured: dict[tuple[int, int], dict[str, Any]] = {}

    def point(num_prompts: int, num_classes: int) -> dict[str, Any]:
        if (num_prompts, num_classes) not in measured:
            step = Step(build_model(clip, num_prompts), clip, vocabulary(171)[:num_classes], device,
                        training_autocast(device))
            clipped = torch.where(labels < num_classes, labels, labels % num_classes)
            clipped[labels == 255] = 255
            result = run_steps(step, settings, repeats=repeats, labels=clipped, read_features=lambda: features)
            measured[num_prompts, num_classes] = {"num_prompts": num_prompts, "classes": num_classes, **result}
        return measured[num_prompts, num_classes]

    return {"by_prompts": [point(k, 15) for k in prompts], "by_classes": [point(3, c) for c in classes]}


def write_voc_like(root: Path, count: int, size: tuple[int, int], seed: int = 0) -> Path:
    """A small VOC2012 layout of synthetic scenes and ellipse labels (20 classes, 0 background)."""
    base = root / "VOCdevkit" / "VOC2012"
    rng = np.random.default_rng(seed)
    ids = [f"2007_{i:06d}" for i in range(count)]
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / folder).mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(ids):
        label = np.zeros(size, np.uint8)
        ys, xs = np.ogrid[: size[0], : size[1]]
        for _ in range(6):
            cy, cx, radius = rng.uniform(0, size[0]), rng.uniform(0, size[1]), rng.uniform(30, size[0] / 3)
            label[(ys - cy) ** 2 + (xs - cx) ** 2 < radius**2] = rng.integers(1, 21)
        Image.fromarray(scene(*size, seed=index)).save(base / "JPEGImages" / f"{name}.jpg")
        Image.fromarray(label, mode="L").save(base / "SegmentationClass" / f"{name}.png")
    (base / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids) + "\n")
    (base / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids[:2]) + "\n")
    return base


def end_to_end(settings: Settings, clip: str = "RN50", batch_size: int = 4, crop: int = 512, iters: int = 4,
               num_workers: int = 2, precision: str = "auto") -> dict[str, Any]:
    """Steady-state seconds per step of ``mvpseg.train`` (loader included), without and with the feature
    cache; the first step and the cache's construction are left out."""
    results: dict[str, Any] = {"clip": clip, "batch_size": batch_size, "crop": crop, "iters": iters,
                               "num_workers": num_workers, "precision": precision}
    with tempfile.TemporaryDirectory() as tmp:
        root = write_voc_like(Path(tmp), count=batch_size * (iters + 1), size=(375, 500))
        for mode in ("uncached", "cached"):
            config = TrainConfig(dataset="voc", data_root=str(root), clip=clip, pretrained=None,
                                 out=f"{tmp}/{mode}", model=mvpseg.MVPSegConfig(num_prompts=3),
                                 iters=iters + 1, batch_size=batch_size, crop_size=crop, num_workers=num_workers,
                                 precision=precision, device=str(settings.device), checkpoint_every=10**9,
                                 log_every=1, feature_cache=f"{tmp}/cache" if mode == "cached" else None,
                                 cache_views=1)
            start = time.perf_counter()
            train(config, progress=False)
            synchronize(settings.device)
            with open(f"{tmp}/{mode}/log.csv") as handle:
                elapsed = [float(row["seconds"]) for row in csv.DictReader(handle)]
            results[mode] = {"seconds_per_step": (elapsed[-1] - elapsed[0]) / iters,
                             "wall_seconds": time.perf_counter() - start}
    results["train_cache_speedup"] = results["uncached"]["seconds_per_step"] / results["cached"]["seconds_per_step"]
    return results


def run(settings: Settings, section: Section, end_to_end_run: bool = False) -> dict[str, Any]:
    """Every training figure (RN50)."""
    with section("train: load"):
        clip = random_clip("RN50", settings.device)
    with section("train: step breakdown"):
        result: dict[str, Any] = {"breakdown": breakdown(clip, settings)}
    with section("train: scaling"):
        prompts = [1, 3] if settings.quick else [1, 2, 3, 4, 6]
        classes = [5, 15] if settings.quick else [5, 15, 30, 60]
        result["scaling"] = scaling(clip, settings, prompts, classes)
    if end_to_end_run:
        with section("train: end to end"):
            result["end_to_end"] = end_to_end(settings)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--end-to-end", action="store_true", help="also time mvpseg.train itself")
    args = parser.parse_args()
    settings = Settings.create(args.device, args.quick, args.threads)
    print(json.dumps(run(settings, Section(), args.end_to_end), indent=2))


if __name__ == "__main__":
    main()
