"""The machinery every training run shares: sample positions, batches, schedules, optimisers, logs, resume.

``mvpseg train`` (prompts) and ``mvpseg transfer`` (the MVP-SEG+ student) run the same way: every
random choice is a function of the seed and the sample's position (or the step and the process), so a
run killed after a checkpoint and resumed takes exactly the samples and random draws of a run that was
never stopped (on the CPU it reaches exactly the same weights; on CUDA see docs/reproduce.md); and N
processes splitting a global batch see the samples of one process. They compute the loss of one
process only where nothing else depends on the per-process batch: BatchNorms that train need
synchronising (the transfer loop's rule, :mod:`mvpseg.transfer.loop`).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from . import distributed
from .checkpoint import CheckpointError, load_training_state, save_training_state
from .config import RunConfig
from .data import SegmentationDataset, TrainAugmentation
from .feature_cache import view_rng
from .files import write_text
from .losses import labelled_weight
from .runtime import autocast, grad_scaler

__all__ = [
    "RESUMABLE",
    "Run",
    "RunLog",
    "SamplePositions",
    "augmentation",
    "check_resumable",
    "deterministic_algorithms",
    "learning_rate",
    "make_optimizer",
    "seeded_step",
    "step_batches",
]

#: Fields that may change between a run and its resumption: they do not change the numbers.
RESUMABLE = {"out", "data_root", "num_workers", "checkpoint_every", "log_every", "device"}


def augmentation(config: RunConfig, pad_value: tuple[int, int, int] = (0, 0, 0)) -> TrainAugmentation:
    """The run's training augmentation (mmseg's pipeline) from its config; crops padded with ``pad_value``."""
    return TrainAugmentation(crop_size=config.crop_size, scale=config.scale, ratio_range=config.ratio_range,
                             cat_max_ratio=config.cat_max_ratio, photometric=config.photometric, pad_value=pad_value)


class SamplePositions(Dataset):
    """Sample *positions* -> augmented samples.

    Position p is sample ``i = order(e)[p % N]`` of epoch ``e = p // N``, augmented as view e of
    sample i (``view_rng(seed, i, e)``), or read from a feature cache (view e mod V): nothing depends
    on workers, restarts or the number of processes.

    Args:
        dataset: the training split.
        augment: the augmentation.
        label_map: (256,) int64 table from the dataset's labels to the run's training labels.
        seed: the run's seed.
        cache: an object with ``get(index, view) -> (features, labels)`` to read instead of augmenting.
    """

    def __init__(self, dataset: SegmentationDataset, augment: TrainAugmentation, label_map: np.ndarray,
                 seed: int, cache: Any = None) -> None:
        self.dataset, self.augment, self.label_map, self.seed, self.cache = dataset, augment, label_map, seed, cache

    @lru_cache(maxsize=2)  # noqa: B019 - a handful of epochs per worker
    def order(self, epoch: int) -> np.ndarray:
        """The permutation of the samples in ``epoch``."""
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
        index = int(self.order(epoch)[offset])
        if self.cache is not None:
            features, label = self.cache.get(index, epoch)
            return {"features": features, "label": label}
        image, label = self.view(index, epoch)
        return {"image": image, "label": label}


def step_batches(start: int, iters: int, batch_size: int, rank: int, world_size: int) -> list[list[int]]:
    """This process's sample positions for steps ``start .. iters - 1``: its share of each global batch."""
    if batch_size % world_size:
        raise ValueError(f"batch size {batch_size} does not split evenly over {world_size} processes")
    local = batch_size // world_size
    return [[step * batch_size + rank * local + i for i in range(local)] for step in range(start, iters)]


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """Run with torch's deterministic algorithms (and cuDNN's) when ``enabled``, the host's settings restored after.

    ``warn_only``: operations torch has no deterministic version of (on CUDA, bilinear upsampling's
    backward among them) warn and run as they are.
    """
    if not enabled:
        yield
        return
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous[2], previous[3]


@contextlib.contextmanager
def seeded_step(seed: int, step: int, rank: int, device: torch.device) -> Iterator[None]:
    """Run one step with torch's random generators seeded by (seed, step, rank), the host's restored after.

    Dropout and any other random operation of a step are then a function of the step alone: a resumed
    run draws what an uninterrupted one drew, with no generator state to save.
    """
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed((seed * 1_000_003 + step) * 1_009 + rank)
        yield


def learning_rate(config: RunConfig, step: int) -> float:
    """The learning rate of ``step``: linear warm-up, then cosine, poly or constant.

    mmseg's rules (its ``PolyLrUpdaterHook`` and ``CosineAnnealing``): poly is
    ``(lr - min_lr) * (1 - step / iters) ** 0.9 + min_lr``, cosine ends at ``min_lr`` the same way.
    """
    if config.warmup_iters and step < config.warmup_iters:
        return config.lr * (step + 1) / config.warmup_iters
    progress = (step - config.warmup_iters) / max(config.iters - config.warmup_iters, 1)
    span = config.lr - config.min_lr
    if config.schedule == "cosine":
        return span * 0.5 * (1 + math.cos(math.pi * progress)) + config.min_lr
    if config.schedule == "poly":
        return span * (1 - progress) ** 0.9 + config.min_lr
    return config.lr


def make_optimizer(config: RunConfig, params: Sequence[torch.nn.Parameter],
                   no_decay: Sequence[torch.nn.Parameter] = ()) -> torch.optim.Optimizer:
    """SGD with momentum or AdamW over ``params`` (with the run's weight decay) and ``no_decay`` (without)."""
    groups = [{"params": list(params)}] + ([{"params": list(no_decay), "weight_decay": 0.0}] if no_decay else [])
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    raise ValueError(f"optimizer must be sgd or adamw, not {config.optimizer!r}")


def check_resumable(saved: dict[str, Any], config: RunConfig, path: Path) -> None:
    """Refuse a checkpoint whose run differs from ``config`` in anything that changes the numbers.

    A field the checkpoint does not know (added to mvpseg after it was written) counts as its default, in
    nested configs too (``loss.views``).
    """
    current, defaults = config.recorded(), type(config)().recorded()
    saved = {**{key: value for key, value in defaults.items() if key not in saved}, **saved}
    saved = {key: {**defaults[key], **value} if isinstance(value, dict) and isinstance(defaults.get(key), dict)
             else value for key, value in saved.items()}
    differing = sorted(key for key in set(saved) | set(current)
                       if key not in RESUMABLE and saved.get(key) != current.get(key))
    if differing:
        details = "; ".join(f"{key}: checkpoint {saved.get(key)!r}, now {current.get(key)!r}" for key in differing)
        raise CheckpointError(f"{path} belongs to another run ({details}); use the same settings or another --out")


class RunLog:
    """CSV (and TensorBoard when installed) logging, rank 0 only; resumed runs drop rows past the checkpoint.

    Args:
        out: the run folder (``log.csv`` and ``tensorboard/`` go there).
        columns: the logged values, in CSV order (after "step").
        start_step: the step the run starts from (0, or the checkpoint's).
        enabled: False on every rank but 0.
    """

    def __init__(self, out: Path, columns: Sequence[str], start_step: int, enabled: bool) -> None:
        self.enabled, self.path, self.writer, self.columns = enabled, out / "log.csv", None, list(columns)
        if not enabled:
            return
        rows = []
        if start_step and self.path.exists():
            with self.path.open(newline="") as handle:
                rows = [row for row in csv.DictReader(handle) if int(row["step"]) <= start_step]
        with self.path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["step", *self.columns])
            writer.writeheader()
            writer.writerows(rows)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=start_step or None)
        except ImportError:  # tensorboard is an optional extra
            self.writer = None

    def log(self, step: int, values: dict[str, float]) -> None:
        """One row: ``values`` holds every column."""
        if not self.enabled:
            return
        with self.path.open("a", newline="") as handle:
            csv.writer(handle).writerow([step] + [f"{values[key]:.6g}" for key in self.columns])
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(f"train/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Run:
    """The part of a training loop that every run shares: processes, resume, the config file, one
    optimisation step, checkpoints.

    Args:
        config: the run's settings.
        resume: continue from ``OUT/checkpoint.safetensors`` if it exists (refused if the run differs).

    Attributes:
        rank, world_size, device: this process (``torchrun``), or (0, 1, the device) alone.
        main: True on the process that prints and writes.
        start: the first step to run (the checkpoint's step when resuming, after :meth:`begin`).
        autocast: the autocast context of the run's precision.
    """

    def __init__(self, config: RunConfig, resume: bool) -> None:
        self.config = config
        self.rank, self.world_size, self.device = distributed.init_distributed(config.device)
        self.batches = step_batches(0, config.iters, config.batch_size, self.rank, self.world_size)
        self.out, self.main = Path(config.out), self.rank == 0
        self.checkpoint_path = self.out / "checkpoint.safetensors"
        self.state = load_training_state(self.checkpoint_path) if resume and self.checkpoint_path.exists() else None
        if self.state is not None:
            check_resumable(self.state.config, config, self.checkpoint_path)
        self.autocast = autocast(self.device, config.precision)
        self.scaler = grad_scaler(self.device, config.precision)
        self.start = 0
        self.params: list[torch.nn.Parameter] = []

    def begin(self, model: torch.nn.Module, no_decay: Callable[[str], bool] | None = None) -> torch.optim.Optimizer:
        """The optimiser of ``model``'s trainable parameters, both restored when resuming; writes ``OUT/config.json``.

        Call it once every frozen part is frozen: the optimiser holds exactly the parameters that then
        require gradients. ``no_decay(name)`` picks parameters trained without weight decay.
        """
        named = [(name, parameter) for name, parameter in model.named_parameters() if parameter.requires_grad]
        plain = [parameter for name, parameter in named if no_decay is None or not no_decay(name)]
        exempt = [parameter for name, parameter in named if no_decay is not None and no_decay(name)]
        self.params = plain + exempt
        optimizer = make_optimizer(self.config, plain, exempt)
        if self.state is not None:
            model.load_state_dict(self.state.model)
            optimizer.load_state_dict(self.state.optimizer)
            if self.scaler is not None and self.state.scaler:
                self.scaler.load_state_dict(self.state.scaler)
            self.start = self.state.step
        if self.main:
            write_text(self.out / "config.json", json.dumps(self.config.recorded(), indent=2) + "\n")
        return optimizer

    def loader(self, samples: Dataset) -> DataLoader:
        """The batches of the steps still to run: this process's share of each global batch."""
        return DataLoader(samples, batch_sampler=self.batches[self.start :], num_workers=self.config.num_workers,
                          pin_memory=self.device.type == "cuda")

    def normalizer(self, labels: torch.Tensor, ignore_index: int = 255, rule: str = "labelled") -> torch.Tensor:
        """What every process divides its summed pixel losses by, so that the gradients averaged over N
        processes are those of the loss of the whole global batch.

        "labelled": the labelled pixels of the global batch per process (a mean over labelled pixels);
        "all": this process's pixels, ignored ones included (mmseg 0.x's mean; every process has crops
        of one size, so the average over processes is the mean over the global batch).
        """
        if rule == "all":
            return torch.tensor(float(labels.numel()), device=labels.device)
        if rule != "labelled":
            raise ValueError(f"loss normalisation must be all or labelled, not {rule!r}")
        count = labelled_weight(labels, ignore_index)
        if self.world_size > 1:
            count = distributed.all_reduce_sum(count) / self.world_size
        return count

    def set_learning_rate(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set and return the schedule's learning rate of ``step``."""
        lr = learning_rate(self.config, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def optimise(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Backward, average the gradients over processes, step (with the fp16 gradient scaler where needed)."""
        optimizer.zero_grad(set_to_none=False)
        (self.scaler.scale(loss) if self.scaler else loss).backward()
        if self.world_size > 1:
            distributed.average_gradients(self.params)
        if self.scaler:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def logs_at(self, done: int) -> bool:
        """Whether this process writes a log row after ``done`` steps."""
        return self.main and (done % self.config.log_every == 0 or done == self.config.iters)

    def checkpoint(self, done: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   write_result: Callable[[], object]) -> None:
        """Every ``checkpoint_every`` steps and at the end: the training state and the run's result
        (``write_result``, e.g. the prompt file), written by the main process; every process waits."""
        if done % self.config.checkpoint_every and done != self.config.iters:
            return
        if self.main:
            save_training_state(self.checkpoint_path, model, optimizer, done, self.config.recorded(),
                                scaler=self.scaler.state_dict() if self.scaler is not None else None)
            write_result()
        distributed.barrier()
