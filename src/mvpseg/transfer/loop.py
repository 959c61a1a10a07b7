"""The MVP-SEG+ training loop: the prompts teach a student, then the student teaches itself.

Each step takes a global batch of augmented crops whose labels hold the seen classes' ground truth
and the :data:`~mvpseg.transfer.pseudo.UNSEEN` marker on unseen pixels. Until ``self_train_from`` the
teacher (MVP-SEG: the frozen CLIP with the learned prompts, run on the same crops, or its labels
written once by ``mvpseg pseudo-label``) names the unseen class of those pixels; from then on the
student's own scores do (MaskCLIP+'s schedule). The student learns with pixel cross-entropy on all
classes. The run machinery is :mod:`mvpseg.runs`: atomic checkpoints, resume, logs, torchrun.

N processes train as one process with the whole global batch only if their BatchNorms agree: on CUDA
every BatchNorm that trains becomes a ``SyncBatchNorm`` (MaskCLIP+'s SyncBN); torch has none on the CPU,
so a multi-process CPU run whose BatchNorms train is refused before its first step (``--freeze-bn all``
makes N CPU processes compute what one does).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

import torch
from torch import nn

from ..backbones import frozen_batchnorms
from ..build import build_student, from_pretrained
from ..checkpoint import save_student_checkpoint
from ..config import InferenceConfig, TransferConfig, inference_made_for
from ..data import build_dataset
from ..inference import Segmenter
from ..losses import segmentation_loss
from ..model import MVPSeg
from ..runs import Run, RunLog, SamplePositions, augmentation, deterministic_algorithms, seeded_step
from ..student import BACKGROUND, DeepLabV3PlusDecoder, DepthwiseSeparableASPPDecoder, Student
from .pseudo import (
    VOID,
    assign_unseen,
    check_pseudo_labels,
    check_unseen_hidden,
    on_pixels,
    pseudo_label_dataset,
    teacher_scores,
    transfer_vocabulary,
)

__all__ = ["TransferStep", "synchronise_batchnorms", "transfer"]


@dataclass
class TransferStep:
    """What one MVP-SEG+ step did, as :func:`transfer` gives it to ``on_step`` (this process's share of the batch).

    Attributes:
        loss: the student's segmentation loss, before the update.
        lr: the learning rate of the step.
        tau1: the student head's fusion scale after the update.
        labels: (B, H, W) int64, the labels the loss was taken on: ground truth on seen pixels, the ranking's
            unseen class on unseen ones, ``ignore_index`` where nobody labelled.
        ranked_by: who named the unseen pixels' classes: "teacher" (the prompts, online), "pseudo-labels" (the
            teacher's, written by ``mvpseg pseudo-label``) or "student" (self-training).
        unseen_scores: (B, U, h, w) float32, the log-probabilities among the U unseen classes the pixels were
            ranked by, on the ranker's feature grid (:func:`mvpseg.transfer.pseudo.teacher_scores`); None for
            written pseudo-labels.
    """

    loss: float
    lr: float
    tau1: float
    labels: torch.Tensor
    ranked_by: Literal["teacher", "pseudo-labels", "student"]
    unseen_scores: torch.Tensor | None


def synchronise_batchnorms(student: Student, world_size: int, local_batch: int, device: torch.device) -> Student:
    """Make N processes train as one: every BatchNorm that trains synchronised over the processes (CUDA), or a
    one-line refusal of what cannot be made equal.

    Args:
        student: the built student, its frozen parts frozen.
        world_size: the number of processes.
        local_batch: images per process and step.
        device: this process's device.

    Returns:
        The student, its training BatchNorms turned into ``SyncBatchNorm`` when ``world_size > 1`` on CUDA.

    Raises:
        ValueError: several CPU processes with training BatchNorms (torch has no SyncBatchNorm on the CPU), or
            a DeepLabv3+ decoder whose image-pooling BatchNorm would see one value per channel.
    """
    training = [norm for norm in frozen_batchnorms(student) if norm.weight is None or norm.weight.requires_grad]
    synced = bool(training) and world_size > 1 and device.type == "cuda"
    if training and world_size > 1 and not synced:
        raise ValueError(
            f"{len(training)} BatchNorms train, and torch cannot synchronise them over {world_size} {device.type} "
            f"processes (each would see only its own {local_batch} images): use one process, CUDA, or --freeze-bn all"
        )
    pooled = isinstance(student.decoder, (DeepLabV3PlusDecoder, DepthwiseSeparableASPPDecoder))
    if pooled and local_batch * (world_size if synced else 1) < 2 and any(
            norm in training for norm in frozen_batchnorms(student.decoder)):
        raise ValueError(
            "DeepLabv3+'s image-pooling BatchNorm needs at least 2 images per BatchNorm group, and this run gives "
            "it 1: use --batch-size of at least 2 per process, SyncBN (several CUDA processes), or --freeze-bn all"
        )
    return nn.SyncBatchNorm.convert_sync_batchnorm(student) if synced else student


def transfer(config: TransferConfig, resume: bool = False, progress: bool = True,
             on_step: Callable[[int, TransferStep], None] | None = None) -> Path:
    """Train an MVP-SEG+ student; under ``torchrun`` every process runs this and rank 0 writes.

    Args:
        config: the run.
        resume: continue from ``OUT/checkpoint.safetensors`` if it exists (refused if the run differs).
        progress: show a progress bar with the loss and ETA (rank 0).
        on_step: called on every process after each step (once its checkpoint is written) with the number
            of steps done and a :class:`TransferStep`; an exception it raises stops the run there, as a crash would.

    Returns:
        Path of the final student checkpoint ``OUT/student.safetensors``.

    Raises:
        ValueError: no prompt checkpoint, or settings that do not fit together.
    """
    if not config.prompts:
        raise ValueError("give --prompts CKPT: the prompt checkpoint (from mvpseg train) that teaches the student")
    if not 0 <= config.unseen_min_probability < 1:
        raise ValueError(f"unseen_min_probability must be in [0, 1), not {config.unseen_min_probability}")
    run = Run(config, resume)
    with deterministic_algorithms(config.deterministic):
        return _transfer(config, run, progress, on_step)


def _transfer(config: TransferConfig, run: Run, progress: bool,
              on_step: Callable[[int, TransferStep], None] | None) -> Path:
    device, main = run.device, run.main
    dataset = build_dataset(config.dataset, config.data_root, config.split, seed=config.seed,
                            class_names_file=config.class_names_file,
                            unseen_file="none" if config.every_class_seen else config.unseen_file)
    names, label_map, unseen = transfer_vocabulary(dataset, config.label_void)
    if main and progress:
        print(f"{dataset.describe()}; {len(names)} classes, {len(unseen)} unseen", flush=True)
    offline = config.pseudo_labels is not None
    if config.pseudo_labels is not None:  # offline: the teacher's labels, written once: read like ground truth (unseen pixels hold unseen classes)
        check_pseudo_labels(config.pseudo_labels, dataset, config.prompts, config.teacher_gpr, config.label_void,
                            config.unseen_min_probability)
        dataset = pseudo_label_dataset(dataset, config.pseudo_labels)
        label_map = dataset.label_lut.copy()
        label_map[label_map < 0] = dataset.info.ignore_index
    teacher = from_pretrained(config.clip, config.pretrained, config.prompts, device=device)
    assert isinstance(teacher, MVPSeg)  # prompts, no student: from_pretrained gives an MVPSeg
    clip = teacher.clip
    background = config.student.background if config.student.background is not None else BACKGROUND in names
    with seeded_step(config.seed, -1, 0, device):  # the student's random initialisation, from the seed alone
        student = build_student(teacher, config.student, background=background).to(device)
    student = synchronise_batchnorms(student, run.world_size, config.batch_size // run.world_size, device)
    optimizer = run.begin(student, no_decay=lambda name: "log_tau" in name)  # temperatures: no weight decay

    mean, std = clip.normalisation(device)
    self_training = config.self_training_step
    online = not offline and run.start < self_training
    # The teacher sees the student's crops whole, as inference sees a window.
    teacher_view = Segmenter(teacher, InferenceConfig(short_side=None, mode="whole", precision=config.precision),
                             device=device) if online else None
    # Crops are padded with the backbone's mean colour: 0 once normalised for it, as mmseg pads after normalising.
    pad_value = cast(tuple[int, int, int], tuple(round(255 * value) for value in student.pixel_mean))  # RGB
    samples = SamplePositions(dataset, augmentation(config, pad_value), label_map, config.seed)
    log = RunLog(run.out, ("loss", "unseen_pixels", "lr", "tau1", "seconds"), run.start, enabled=main)
    teacher_info = {"prompts": Path(config.prompts).name, "config": teacher.config.to_dict()}
    extra = {"dataset": config.dataset, "class_names": names, "unseen": [names[i] for i in unseen]}
    made_for = inference_made_for(dataset.info.name, config.scale, student=True)  # segment's default scale
    ignore = dataset.info.ignore_index
    unseen_ids = torch.tensor(unseen, device=device, dtype=torch.int64)
    from tqdm import tqdm

    bar = tqdm(total=config.iters, initial=run.start, desc="transfer", unit="it", disable=not (progress and main))
    tic = time.perf_counter()
    student.train()
    for step, batch in enumerate(run.loader(samples), start=run.start):
        with seeded_step(config.seed, step, run.rank, device):
            labels = batch["label"].to(device, non_blocking=True)
            images = (batch["image"].to(device, non_blocking=True).float() / 255.0 - mean) / std
            lr = run.set_learning_rate(optimizer, step)
            teaching = step < self_training
            if not offline:  # MaskCLIP+'s label_sanity_check
                check_unseen_hidden(labels, unseen, step)
            scores: torch.Tensor | None = None  # (B, U, h, w) what the unseen pixels are ranked by
            if teaching and teacher_view is not None:
                scores = teacher_scores(teacher_view.predict_torch(images, names), unseen, config.teacher_gpr)
                pixels = on_pixels(scores, teacher_view.feature_stride, tuple(labels.shape[-2:]))
                labels = assign_unseen(labels, pixels, unseen, config.unseen_min_probability, ignore).clone()
            with run.autocast:
                output = student(images, names)
            if not teaching:  # self-training: the student's own best unseen class, from this very forward
                with torch.no_grad():
                    scores = teacher_scores(output, unseen, False)
                    labels = assign_unseen(labels, scores, unseen, config.unseen_min_probability, ignore)
            labels = torch.where(labels >= VOID, torch.full_like(labels, ignore), labels)  # markers nobody filled
            loss = segmentation_loss(output, labels, ignore, normalizer=run.normalizer(labels, ignore, config.loss_norm))
            run.optimise(loss, optimizer)
        done = step + 1
        ranked_by: Literal["teacher", "pseudo-labels", "student"] = (
            "student" if not teaching else "pseudo-labels" if offline else "teacher")
        record = None
        if on_step is not None or run.logs_at(done):
            record = TransferStep(loss=float(loss.detach()), lr=lr, tau1=float(student.head.tau1.detach()),
                                  labels=labels.detach(), ranked_by=ranked_by,
                                  unseen_scores=None if scores is None else scores.detach().float())
        if record is not None and run.logs_at(done):
            unseen_pixels = float(torch.isin(labels, unseen_ids).float().mean()) if unseen else 0.0
            log.log(done, {"loss": record.loss, "unseen_pixels": unseen_pixels, "lr": lr, "tau1": record.tau1,
                           "seconds": time.perf_counter() - tic})
            bar.set_postfix(loss=f"{record.loss:.4f}", phase="teacher" if teaching else "self")
        bar.update(1)
        # (type: ignore: mypy cannot infer a lambda with a default argument)
        run.checkpoint(done, student, optimizer, lambda done=done: save_student_checkpoint(  # type: ignore[misc]
            run.out / "student.safetensors", student, teacher_info, extra={**extra, "iters": done}, inference=made_for))
        if on_step is not None and record is not None:
            on_step(done, record)
    bar.close()
    log.close()
    return run.out / "student.safetensors"
