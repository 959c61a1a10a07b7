"""The MVP-SEG+ training loop: the prompts teach a student, then the student teaches itself.

Each step takes a global batch of augmented crops whose labels hold the seen classes' ground truth
and the :data:`~mvpseg.transfer.pseudo.UNSEEN` marker on unseen pixels. Until ``self_train_from`` the
teacher (MVP-SEG: the frozen CLIP with the learned prompts, run on the same crops, or its labels
written once by ``mvpseg pseudo-label``) names the unseen class of those pixels; from then on the
student's own scores do (MaskCLIP+'s schedule). The student learns with pixel cross-entropy on all
classes. The run machinery is :mod:`mvpseg.runs`': atomic checkpoints, bit-exact resume, logs, torchrun.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..build import build_student, from_pretrained
from ..checkpoint import save_student_checkpoint
from ..config import InferenceConfig, TransferConfig
from ..data import build_dataset
from ..inference import Segmenter
from ..losses import segmentation_loss
from ..runs import Run, RunLog, SamplePositions, augmentation, seeded_step
from .pseudo import VOID, assign_unseen, pseudo_label_dataset, teacher_scores, transfer_vocabulary
from .student import BACKGROUND

__all__ = ["transfer"]


def transfer(config: TransferConfig, resume: bool = False, progress: bool = True,
             callback: Callable[[int], None] | None = None) -> Path:
    """Train an MVP-SEG+ student; under ``torchrun`` every process runs this and rank 0 writes.

    Args:
        config: the run.
        resume: continue from ``OUT/checkpoint.safetensors`` if it exists (refused if the run differs).
        progress: show a progress bar with the loss and ETA (rank 0).
        callback: called with the step number after each step (tests use it to interrupt a run).

    Returns:
        Path of the final student checkpoint ``OUT/student.safetensors``.

    Raises:
        ValueError: no prompt checkpoint, or settings that do not fit together.
    """
    if not config.prompts:
        raise ValueError("give --prompts CKPT: the prompt checkpoint (from mvpseg train) that teaches the student")
    if not 0 < config.confidence < 1 and config.confidence != 0:
        raise ValueError(f"confidence must be in [0, 1), not {config.confidence}")
    run = Run(config, resume)
    device, main = run.device, run.main
    dataset = build_dataset(config.dataset, config.data_root, config.split, seed=config.seed,
                            class_names_file=config.class_names_file, unseen_file=config.unseen_file)
    names, label_map, unseen = transfer_vocabulary(dataset, config.label_void)
    if main and progress:
        print(f"{dataset.describe()}; {len(names)} classes, {len(unseen)} unseen", flush=True)
    offline = config.pseudo_labels is not None
    if offline:  # the teacher's labels, written once: read like ground truth (unseen pixels hold unseen classes)
        dataset = pseudo_label_dataset(dataset, config.pseudo_labels)
        label_map = dataset.label_lut.copy()
        label_map[label_map < 0] = dataset.info.ignore_index
    teacher = from_pretrained(config.clip, config.pretrained, config.prompts, device=device)
    clip = teacher.clip
    background = config.student.background if config.student.background is not None else BACKGROUND in names
    with seeded_step(config.seed, -1, 0, device):  # the student's random initialisation, from the seed alone
        student = build_student(teacher, config.student, background=background).to(device)
    optimizer = run.begin(student)

    mean = torch.tensor(clip.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(clip.std, device=device).view(1, 3, 1, 1)
    online = not offline and run.start < config.self_train_from
    # The teacher sees the student's crops whole, as inference sees a window.
    teacher_view = Segmenter(teacher, InferenceConfig(short_side=None, mode="whole", precision=config.precision),
                             device=device) if online else None
    samples = SamplePositions(dataset, augmentation(config), label_map, config.seed)
    log = RunLog(run.out, ("loss", "unseen_pixels", "lr", "tau1", "seconds"), run.start, enabled=main)
    teacher_info = {"prompts": Path(config.prompts).name, "config": teacher.config.to_dict()}
    extra = {"dataset": config.dataset, "class_names": names, "unseen": [names[i] for i in unseen]}
    ignore = dataset.info.ignore_index
    from tqdm import tqdm

    bar = tqdm(total=config.iters, initial=run.start, desc="transfer", unit="it", disable=not (progress and main))
    tic = time.perf_counter()
    student.train()
    for step, batch in enumerate(run.loader(samples), start=run.start):
        with seeded_step(config.seed, step, run.rank, device):
            labels = batch["label"].to(device, non_blocking=True)
            images = (batch["image"].to(device, non_blocking=True).float() / 255.0 - mean) / std
            lr = run.set_learning_rate(optimizer, step)
            teaching = step < config.self_train_from
            if teaching and teacher_view is not None:
                scores = teacher_scores(teacher_view.predict_torch(images, names), unseen, config.teacher_gpr)
                labels = assign_unseen(labels, scores, unseen, config.confidence, ignore).clone()
            with run.autocast:
                output = student(images, names)
            if not teaching:  # self-training: the student's own best unseen class, from this very forward
                with torch.no_grad():
                    labels = assign_unseen(labels, teacher_scores(output, unseen, False), unseen,
                                           config.confidence, ignore)
            labels = torch.where(labels >= VOID, torch.full_like(labels, ignore), labels)  # markers nobody filled
            loss = segmentation_loss(output, labels, ignore, normalizer=run.normalizer(labels, ignore))
            run.optimise(loss, optimizer)
        done = step + 1
        if run.logs_at(done):
            unseen_pixels = float(torch.isin(labels, torch.tensor(unseen, device=device)).float().mean()) if unseen else 0.0
            values = {"loss": float(loss.detach()), "unseen_pixels": unseen_pixels, "lr": lr,
                      "tau1": float(student.head.tau1.detach()), "seconds": time.perf_counter() - tic}
            log.log(done, values)
            bar.set_postfix(loss=f"{values['loss']:.4f}", phase="teacher" if teaching else "self")
        bar.update(1)
        run.checkpoint(done, student, optimizer, lambda done=done: save_student_checkpoint(
            run.out / "student.safetensors", student, teacher_info, extra={**extra, "iters": done}))
        if callback is not None:
            callback(done)
    bar.close()
    log.close()
    return run.out / "student.safetensors"
