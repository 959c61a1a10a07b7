"""Training MVP-SEG prompts on seen classes: configs and presets, the loop, checkpoints, resume, data parallel.

Only the prompt contexts and the head's temperatures are trained; CLIP stays frozen. Every
random choice of the data pipeline is a function of (seed, sample position), so a run killed after
a checkpoint and resumed takes exactly the samples, and reaches exactly the prompts, of a run that
was never stopped; and N processes splitting a global batch see the same samples as one process.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from . import distributed
from .build import build_mvpseg
from .checkpoint import CheckpointError, load_training_state, save_prompt_checkpoint, save_training_state
from .clip import load_clip
from .config import TRAIN_PRESETS, TrainConfig
from .data import SegmentationDataset, TrainAugmentation, build_dataset
from .feature_cache import FeatureCache, build_feature_cache, view_rng, weights_fingerprint
from .files import write_text
from .losses import labelled_weight, total_loss
from .runtime import autocast, grad_scaler

__all__ = ["TrainConfig", "PRESETS", "preset", "train", "training_vocabulary", "check_resumable"]

#: Per-dataset presets (:data:`mvpseg.config.TRAIN_PRESETS`).
PRESETS = TRAIN_PRESETS


def preset(name: str, **overrides: Any) -> TrainConfig:
    """The named preset with ``overrides`` applied (unknown presets: plain defaults for that dataset)."""
    values = {**TRAIN_PRESETS.get(name, {"dataset": name}), **overrides}
    return TrainConfig(**values)


class _TrainSamples(Dataset):
    """Sample *positions* -> augmented samples. Position p is sample ``i = order(e)[p % N]`` of epoch
    ``e = p // N``, augmented as view e of sample i (``view_rng(seed, i, e)``), or read from a feature
    cache (view e mod V): nothing depends on workers, restarts or the number of processes."""

    def __init__(self, dataset: SegmentationDataset, augment: TrainAugmentation, label_map: np.ndarray,
                 seed: int, cache: FeatureCache | None = None) -> None:
        self.dataset, self.augment, self.label_map, self.seed, self.cache = dataset, augment, label_map, seed, cache

    @lru_cache(maxsize=2)  # noqa: B019 - a handful of epochs per worker
    def _order(self, epoch: int) -> np.ndarray:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.dataset), generator=generator).numpy()

    def __len__(self) -> int:
        return 2**62

    def view(self, index: int, view: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Augmented view ``view`` of sample ``index``: image uint8 (3, S, S), label int64 (S, S)."""
        image, label = self.dataset.load(index)
        return self.augment(image, self.label_map[label], view_rng(self.seed, index, view))

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        epoch, offset = divmod(position, len(self.dataset))
        index = int(self._order(epoch)[offset])
        if self.cache is not None:
            features, label = self.cache.get(index, epoch)
            return {"features": features, "label": label}
        image, label = self.view(index, epoch)
        return {"image": image, "label": label}


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


def _learning_rate(config: TrainConfig, step: int) -> float:
    if config.warmup_iters and step < config.warmup_iters:
        return config.lr * (step + 1) / config.warmup_iters
    progress = (step - config.warmup_iters) / max(config.iters - config.warmup_iters, 1)
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1 + math.cos(math.pi * progress))
    if config.schedule == "poly":
        return config.lr * (1 - progress) ** 0.9
    return config.lr


def _optimizer(config: TrainConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    raise ValueError(f"optimizer must be sgd or adamw, not {config.optimizer!r}")


# What a feature cache depends on (with the resolved data root and the ViT mode).
_CACHE_KEY = {"dataset", "split", "class_names_file", "unseen_file", "transductive", "clip", "pretrained",
              "crop_size", "scale", "ratio_range", "cat_max_ratio", "photometric", "seed", "cache_views"}

# Fields that may change between a run and its resumption: they do not change the numbers.
_RESUMABLE = {"out", "data_root", "num_workers", "checkpoint_every", "log_every", "device"}


def check_resumable(saved: dict[str, Any], config: TrainConfig, path: Path) -> None:
    """Refuse a checkpoint whose run differs from ``config`` in anything that changes the numbers."""
    current = config.to_dict()
    differing = sorted(key for key in set(saved) | set(current)
                       if key not in _RESUMABLE and saved.get(key) != current.get(key))
    if differing:
        details = "; ".join(f"{key}: checkpoint {saved.get(key)!r}, now {current.get(key)!r}" for key in differing)
        raise CheckpointError(f"{path} belongs to another run ({details}); use the same settings or another --out")


class _Logger:
    """CSV (and TensorBoard when installed) logging, rank 0 only; resumed runs drop rows past the checkpoint."""

    def __init__(self, out: Path, start_step: int, enabled: bool) -> None:
        self.enabled, self.path, self.writer = enabled, out / "log.csv", None
        if not enabled:
            return
        columns = ["step", "loss", "seg", "cls", "oc", "lr", "tau1", "tau2", "seconds"]
        rows = []
        if start_step and self.path.exists():
            with self.path.open(newline="") as handle:
                rows = [row for row in csv.DictReader(handle) if int(row["step"]) <= start_step]
        with self.path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=start_step or None)
        except ImportError:  # tensorboard is an optional extra
            self.writer = None

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        with self.path.open("a", newline="") as handle:
            csv.writer(handle).writerow([step] + [f"{values[k]:.6g}" for k in
                                                  ("loss", "seg", "cls", "oc", "lr", "tau1", "tau2", "seconds")])
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(f"train/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _feature_cache(config: TrainConfig, samples: _TrainSamples, clip_model: torch.nn.Module, normalize,
                   device: torch.device, context: Any, progress: bool) -> FeatureCache:
    """Build (rank 0) or open the feature cache of this run's augmented views."""
    key = {name: value for name, value in config.to_dict().items() if name in _CACHE_KEY}
    key["data_root"] = str(Path(config.data_root).resolve())
    key["vit_mode"] = config.model.vit_mode
    key["clip_weights"] = weights_fingerprint(clip_model)
    folder = Path(config.feature_cache)
    if distributed.is_main_process():
        build_feature_cache(folder, key, config.cache_views, len(samples.dataset), samples.view, clip_model,
                            normalize, config.model.vit_mode, device, autocast=context, progress=progress)
    distributed.barrier()
    if not FeatureCache.matches(folder, key):
        raise CheckpointError(f"feature cache {folder} was made for another run; remove it or use another folder")
    return FeatureCache(folder)


def train(config: TrainConfig, resume: bool = False, progress: bool = True,
          callback: Callable[[int], None] | None = None) -> Path:
    """Train MVP-SEG prompts; under ``torchrun`` every process runs this and rank 0 writes.

    Args:
        config: the run.
        resume: continue from ``OUT/checkpoint.safetensors`` if it exists (refused if the run differs).
        progress: show a progress bar with the loss and ETA (rank 0).
        callback: called with the step number after each step (tests use it to interrupt a run).

    Returns:
        Path of the final prompt checkpoint ``OUT/prompts.safetensors``.
    """
    rank, world_size, device = distributed.init_distributed(config.device)
    if config.batch_size % world_size:
        raise ValueError(f"batch size {config.batch_size} does not split evenly over {world_size} processes")
    out = Path(config.out)
    main = rank == 0
    checkpoint_path = out / "checkpoint.safetensors"
    state = load_training_state(checkpoint_path) if resume and checkpoint_path.exists() else None
    if state is not None:
        check_resumable(state.config, config, checkpoint_path)

    dataset = build_dataset(config.dataset, config.data_root, config.split, seed=config.seed,
                            class_names_file=config.class_names_file, unseen_file=config.unseen_file)
    names, label_map = training_vocabulary(dataset, config.transductive)
    augment = TrainAugmentation(crop_size=config.crop_size, scale=config.scale, ratio_range=config.ratio_range,
                                cat_max_ratio=config.cat_max_ratio, photometric=config.photometric)
    clip = load_clip(config.clip, config.pretrained, device=device)
    torch.manual_seed(config.seed)
    model = build_mvpseg(clip, config.model, generator=torch.Generator().manual_seed(config.seed)).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = _optimizer(config, params)
    start = 0
    if state is not None:
        model.load_state_dict(state.model)
        optimizer.load_state_dict(state.optimizer)
        torch.set_rng_state(state.rng)
        start = state.step
    if main:
        write_text(out / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")

    local_batch = config.batch_size // world_size
    batches = [[step * config.batch_size + rank * local_batch + i for i in range(local_batch)]
               for step in range(start, config.iters)]
    mean = torch.tensor(clip.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(clip.std, device=device).view(1, 3, 1, 1)
    context, scaler = autocast(device, config.precision), grad_scaler(device, config.precision)
    samples = _TrainSamples(dataset, augment, label_map, config.seed)
    if config.feature_cache:
        samples.cache = _feature_cache(config, samples, clip.model, lambda x: (x - mean) / std, device, context,
                                       progress and main)
    loader = DataLoader(samples, batch_sampler=batches, num_workers=config.num_workers,
                        pin_memory=device.type == "cuda")
    logger = _Logger(out, start, enabled=main)
    extra = {"dataset": config.dataset, "trained_on": names, "transductive": config.transductive}
    from tqdm import tqdm

    bar = tqdm(total=config.iters, initial=start, desc="train", unit="it", disable=not (progress and main))
    tic = time.perf_counter()
    model.train()
    for step, batch in enumerate(loader, start=start):
        labels = batch["label"].to(device, non_blocking=True)
        lr = _learning_rate(config, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        normalizer = labelled_weight(labels)
        if world_size > 1:  # every process divides by the pixel count of the whole global batch
            normalizer = distributed.all_reduce_sum(normalizer) / world_size
        with context:
            if "features" in batch:
                output = model.segment_features(batch["features"].to(device, non_blocking=True).float(), names)
            else:
                output = model((batch["image"].to(device, non_blocking=True).float() / 255.0 - mean) / std, names)
        mean_contexts = model.prompts.mean_contexts() if model.prompts is not None else None
        losses = total_loss(output, labels, mean_contexts, config.loss, seg_normalizer=normalizer)
        optimizer.zero_grad(set_to_none=False)
        (scaler.scale(losses["loss"]) if scaler else losses["loss"]).backward()
        if world_size > 1:
            distributed.average_gradients(params)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        done = step + 1
        if main and (done % config.log_every == 0 or done == config.iters):
            values = {k: float(v.detach()) for k, v in losses.items()}
            values.update(lr=lr, tau1=float(model.head.tau1.detach()), tau2=float(model.head.tau2.detach()),
                          seconds=time.perf_counter() - tic)
            logger.log(done, values)
            bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{lr:.2e}")
        bar.update(1)
        if done % config.checkpoint_every == 0 or done == config.iters:
            if main:
                save_training_state(checkpoint_path, model, optimizer, done, config.to_dict())
                save_prompt_checkpoint(out / "prompts.safetensors", model, extra={**extra, "iters": done})
            distributed.barrier()
        if callback is not None:
            callback(done)
    bar.close()
    logger.close()
    return out / "prompts.safetensors"
