"""Training MVP-SEG prompts on seen classes: configs and presets, the loop, checkpoints, resume, data parallel.

Only the prompt contexts and the head's temperatures are trained; CLIP stays frozen. Every
random choice of the data pipeline is a function of (seed, sample position), so a run killed after
a checkpoint and resumed takes exactly the samples, and reaches exactly the prompts, of a run that
was never stopped; and N processes splitting a global batch see the same samples as one process.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import distributed
from .build import build_mvpseg
from .checkpoint import CheckpointError, save_prompt_checkpoint
from .clip import ClipBundle, load_clip
from .config import TRAIN_PRESETS, TrainConfig, inference_made_for
from .data import SegmentationDataset, build_dataset
from .feature_cache import FeatureCache, build_feature_cache, cache_key
from .losses import total_loss
from .runs import Run, RunLog, SamplePositions, augmentation

__all__ = ["TrainConfig", "PRESETS", "TrainStep", "preset", "train", "training_vocabulary"]

#: Per-dataset presets (:data:`mvpseg.config.TRAIN_PRESETS`).
PRESETS = TRAIN_PRESETS


def preset(name: str, **overrides: Any) -> TrainConfig:
    """The named preset with ``overrides`` applied (unknown presets: plain defaults for that dataset)."""
    values = {**TRAIN_PRESETS.get(name, {"dataset": name}), **overrides}
    return TrainConfig(**values)


def training_vocabulary(dataset: SegmentationDataset, transductive: bool) -> tuple[list[str], np.ndarray]:
    """Class names shown to the prompts and the map from dataset labels to training labels.

    Inductive: the seen classes only, unseen pixels -> ignore. Transductive: every class name,
    unseen pixels still ignored (unlabelled).
    """
    info = dataset.info
    names = list(info.class_names) if transductive else list(info.seen_names)
    label_map = np.full(256, info.ignore_index, dtype=np.int64)
    for new_index, name in enumerate(names):
        old_index = info.class_names.index(name)
        if old_index not in info.unseen:
            label_map[old_index] = new_index
    return names, label_map


def _feature_cache(config: TrainConfig, samples: SamplePositions, clip: ClipBundle, normalize,
                   device: torch.device, context: Any, progress: bool) -> FeatureCache:
    """Build (rank 0) or open the feature cache of this run's augmented views."""
    key = cache_key(config, clip)
    assert config.feature_cache is not None  # called for a run with a feature cache only
    folder = Path(config.feature_cache)
    if distributed.is_main_process():
        build_feature_cache(folder, key, config.cache_views, len(samples.dataset), samples.view, clip.model,
                            normalize, config.model.vit_mode, device, autocast=context, progress=progress)
    distributed.barrier()
    if not FeatureCache.matches(folder, key):
        raise CheckpointError(f"feature cache {folder} was made for another run; remove it or use another folder")
    return FeatureCache(folder)


def _view_classes(config: TrainConfig, names: list[str], device: torch.device) -> torch.Tensor | None:
    """(C,) bool: the training classes the view terms (beyond the paper) are taken over; None: all of them."""
    if not config.loss.views_classes:
        return None
    unknown = sorted(set(config.loss.views_classes) - set(names))
    if unknown and not (set(config.loss.views_classes) & set(names)):
        raise ValueError(f"views_classes names no training class ({', '.join(unknown)})")
    return torch.tensor([name in config.loss.views_classes for name in names], device=device)


@dataclass
class TrainStep:
    """What one training step did, as :func:`train` gives it to ``on_step`` (this process's share of the batch).

    Attributes:
        losses: the loss and its terms as :func:`mvpseg.losses.total_loss` gives them ("loss", "seg", "cls",
            "oc"; "views", "views_entropy" and "overlap" when those terms are on), before the update.
        lr: the learning rate of the step.
        tau1, tau2: the head's temperatures after the update.
    """

    losses: dict[str, float]
    lr: float
    tau1: float
    tau2: float


def train(config: TrainConfig, resume: bool = False, progress: bool = True,
          on_step: Callable[[int, TrainStep], None] | None = None) -> Path:
    """Train MVP-SEG prompts; under ``torchrun`` every process runs this and rank 0 writes.

    Args:
        config: the run.
        resume: continue from ``OUT/checkpoint.safetensors`` if it exists (refused if the run differs).
        progress: show a progress bar with the loss and ETA (rank 0).
        on_step: called on every process after each step (once its checkpoint is written) with the number
            of steps done and a :class:`TrainStep`; an exception it raises stops the run there, as a crash would.

    Returns:
        Path of the final prompt checkpoint ``OUT/prompts.safetensors``.
    """
    run = Run(config, resume)
    device, main = run.device, run.main
    dataset = build_dataset(config.dataset, config.data_root, config.split, seed=config.seed,
                            class_names_file=config.class_names_file,
                            unseen_file="none" if config.every_class_seen else config.unseen_file)
    if main and progress:
        print(f"{dataset.describe()}; {len(dataset.info.class_names)} classes, {len(dataset.info.unseen)} unseen",
              flush=True)
    names, label_map = training_vocabulary(dataset, config.transductive)
    # Transductive: the unseen names are shown but their pixels are unlabelled, so their presence is unknown.
    seen = set(dataset.info.seen_names)
    known_presence = torch.tensor([name in seen for name in names], device=device) if config.transductive else None
    clip = load_clip(config.clip, config.pretrained, device=device)
    model = build_mvpseg(clip, config.model, generator=torch.Generator().manual_seed(config.seed)).to(device)
    optimizer = run.begin(model)

    mean, std = clip.normalisation(device)
    samples = SamplePositions(dataset, augmentation(config), label_map, config.seed)
    if config.feature_cache:
        samples.cache = _feature_cache(config, samples, clip, lambda x: (x - mean) / std, device, run.autocast,
                                       progress and main)
    view_classes = _view_classes(config, names, device)
    columns = ("loss", "seg", "cls", "oc") + (("views", "views_entropy") if config.loss.views else ()) + \
        (("overlap",) if config.loss.overlap else ())
    logger = RunLog(run.out, (*columns, "lr", "tau1", "tau2", "seconds"), run.start, enabled=main)
    extra = {"dataset": config.dataset, "trained_on": names, "transductive": config.transductive}
    made_for = inference_made_for(dataset.info.name, config.scale)  # segment's default scale for these prompts
    from tqdm import tqdm

    bar = tqdm(total=config.iters, initial=run.start, desc="train", unit="it", disable=not (progress and main))
    tic = time.perf_counter()
    model.train()
    for step, batch in enumerate(run.loader(samples), start=run.start):
        labels = batch["label"].to(device, non_blocking=True)
        lr = run.set_learning_rate(optimizer, step)
        normalizer = run.normalizer(labels)
        with run.autocast:
            if "features" in batch:
                output = model.segment_features(batch["features"].to(device, non_blocking=True).float(), names)
            else:
                output = model((batch["image"].to(device, non_blocking=True).float() / 255.0 - mean) / std, names)
        mean_contexts = model.prompts.mean_contexts() if model.prompts is not None else None
        losses = total_loss(output, labels, mean_contexts, config.loss, seg_normalizer=normalizer,
                            known_presence=known_presence, tau1=model.head.tau1, view_classes=view_classes)
        run.optimise(losses["loss"], optimizer)
        done = step + 1
        record = None
        if on_step is not None or run.logs_at(done):
            record = TrainStep(losses={k: float(v.detach()) for k, v in losses.items()}, lr=lr,
                               tau1=float(model.head.tau1.detach()), tau2=float(model.head.tau2.detach()))
        if record is not None and run.logs_at(done):
            logger.log(done, {**record.losses, "lr": lr, "tau1": record.tau1, "tau2": record.tau2,
                              "seconds": time.perf_counter() - tic})
            bar.set_postfix(loss=f"{record.losses['loss']:.4f}", lr=f"{lr:.2e}")
        bar.update(1)
        # (type: ignore: mypy cannot infer a lambda with a default argument)
        run.checkpoint(done, model, optimizer, lambda done=done: save_prompt_checkpoint(  # type: ignore[misc]
            run.out / "prompts.safetensors", model, extra={**extra, "iters": done}, inference=made_for))
        if on_step is not None and record is not None:
            on_step(done, record)
    bar.close()
    logger.close()
    return run.out / "prompts.safetensors"
