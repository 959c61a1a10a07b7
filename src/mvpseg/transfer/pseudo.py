"""MVP-SEG+'s labels: seen pixels keep their ground truth, unseen pixels get the teacher's (or, later, the
student's own) best unseen class.

The transductive zero-shot setting of MaskCLIP+ and ZegCLIP: the unseen class *names* are known and
so are the pixels that belong to *some* unseen class (their ground truth is withheld, not erased),
but not which unseen class each is. During training those pixels carry the marker :data:`UNSEEN`;
:func:`assign_unseen` gives each the argmax over the unseen classes only (never a seen class) of a
teacher's or the student's scores. Options, as config fields: void pixels can be labelled too
(:data:`VOID`; MaskCLIP+ does not), and a confidence threshold leaves unsure pixels unlabelled
(MaskCLIP+'s default: none).

:func:`write_pseudo_labels` writes the teacher's labels once for a whole training set
(``mvpseg pseudo-label``), each process taking every world_size-th image, and
:func:`pseudo_label_dataset` reads them back like ground truth.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data import DataLayoutError, SegmentationDataset
from ..files import atomic_write, write_text
from ..model import MVPSegOutput

__all__ = ["UNSEEN", "VOID", "assign_unseen", "check_pseudo_labels", "check_unseen_hidden", "on_pixels",
           "prompts_fingerprint", "pseudo_label_dataset", "teacher_scores", "transfer_vocabulary",
           "write_pseudo_labels"]

#: Training label of a pixel whose class is one of the unseen classes (which one is not given).
UNSEEN = 254
#: Training label of a void (ignore) pixel that the teacher may label (``label_void``); crop padding stays 255.
VOID = 253


def transfer_vocabulary(dataset: SegmentationDataset, label_void: bool = False) -> tuple[list[str], np.ndarray, list[int]]:
    """The student's vocabulary (every class name), the map from dataset labels to training labels, the unseen indices.

    Seen classes keep their index, unseen classes become :data:`UNSEEN`, void becomes :data:`VOID` when
    ``label_void`` (else stays ignore).

    Raises:
        ValueError: a dataset with so many classes that its indices reach the markers.
    """
    info = dataset.info
    if info.num_classes > VOID:
        raise ValueError(f"{info.name} has {info.num_classes} classes; MVP-SEG+ handles at most {VOID}")
    label_map = np.full(256, info.ignore_index, dtype=np.int64)
    label_map[: info.num_classes] = np.arange(info.num_classes)
    label_map[list(info.unseen)] = UNSEEN
    if label_void:
        label_map[info.ignore_index] = VOID
    return list(info.class_names), label_map, list(info.unseen)


def check_unseen_hidden(labels: torch.Tensor, unseen: Sequence[int], step: int) -> None:
    """Refuse a batch whose training labels hold an unseen class's ground truth (MaskCLIP+'s label_sanity_check):
    unseen pixels must reach a step as :data:`UNSEEN` only, for the teacher or the student to name.

    Args:
        labels: (B, H, W) int64 training labels (:func:`transfer_vocabulary`'s map applied).
        unseen: the unseen class indices.
        step: the step, named in the error.

    Raises:
        RuntimeError: an unseen class index among ``labels``.
    """
    if unseen and bool(torch.isin(labels, torch.as_tensor(list(unseen), device=labels.device)).any()):
        raise RuntimeError(f"unseen ground truth reached step {step}: the label map leaks unseen classes")


def teacher_scores(output: MVPSegOutput, unseen: Sequence[int], use_gpr: bool) -> torch.Tensor:
    """(B, U, h, w) log-probabilities among the unseen classes, from a teacher's or the student's output.

    Args:
        output: the model's output at feature resolution.
        unseen: the U unseen class indices.
        use_gpr: rank by the final map (fused map times GPR's class scores) instead of the fused map.
    """
    logits = output.final_logits() if use_gpr and output.presence_logits is not None else output.fused_logits
    return logits[:, list(unseen)].float().log_softmax(dim=1)


def on_pixels(scores: torch.Tensor, stride: int, size: tuple[int, int]) -> torch.Tensor:
    """(B, U, h, w) scores on a grid of ``stride``-pixel cells that covers an image padded at the bottom and right
    to whole cells -> (B, U, H, W) on the image's pixels: upsampled to the padded size, then cropped, so that
    each cell stays over its own pixels whatever the crop size (as :meth:`mvpseg.Segmenter.upsample_log_scores` does)."""
    padded = (scores.shape[-2] * stride, scores.shape[-1] * stride)
    if padded == tuple(size):
        return scores
    upsampled = F.interpolate(scores, size=padded, mode="bilinear", align_corners=False)  # (B, U, h*s, w*s)
    return upsampled[..., : size[0], : size[1]]


def assign_unseen(labels: torch.Tensor, scores: torch.Tensor, unseen: Sequence[int], confidence: float = 0.0,
                  ignore_index: int = 255) -> torch.Tensor:
    """Labels with every unseen pixel given its best unseen class.

    Args:
        labels: (B, H, W) int64 training labels: seen classes, unseen classes (e.g. earlier pseudo-labels),
            :data:`UNSEEN`, :data:`VOID` or ``ignore_index``.
        scores: (B, U, h, w) log-probabilities among the unseen classes (:func:`teacher_scores`); upsampled
            (bilinear) to the labels' size when smaller.
        unseen: the U unseen class indices, in the order of ``scores``.
        confidence: a pixel whose probability for its best unseen class is below this becomes ``ignore_index``.
        ignore_index: the label of unlabelled pixels.

    Returns:
        (B, H, W) int64: seen and ignored pixels as they were; pixels marked UNSEEN or VOID, or already
        holding an unseen class, now hold ``unseen[argmax_u scores]``.
    """
    unseen_ids = torch.as_tensor(list(unseen), device=labels.device, dtype=torch.int64)
    fill = (labels == UNSEEN) | (labels == VOID) | torch.isin(labels, unseen_ids)
    if not bool(fill.any()):
        return labels
    if scores.shape[-2:] != labels.shape[-2:]:
        scores = F.interpolate(scores, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    best, choice = scores.max(dim=1)  # (B, H, W) each
    assigned = unseen_ids[choice]
    if confidence > 0:
        assigned = torch.where(best.exp() >= confidence, assigned, torch.full_like(assigned, ignore_index))
    return torch.where(fill, assigned, labels)


def write_pseudo_labels(segmenter: Any, dataset: SegmentationDataset, out: str | os.PathLike[str],
                        use_gpr: bool = False, label_void: bool = False, confidence: float = 0.0,
                        progress: bool = True, teacher: dict[str, Any] | None = None) -> int:
    """Label a training set with the teacher once: ``OUT/<id>.png`` (palette PNGs of class indices, 255 void).

    Under torch.distributed, rank r labels images r, r + world_size, ...: every file is written by
    one process, and the files do not depend on the number of processes.

    Args:
        segmenter: a :class:`mvpseg.Segmenter` around the teacher (its InferenceConfig sets the scale).
        dataset: the training split, labels in the dataset's label space.
        out: the folder of label maps.
        use_gpr, label_void: the rule's options (see :class:`mvpseg.config.TransferConfig`).
        confidence: :class:`~mvpseg.config.TransferConfig`'s ``unseen_min_probability``.
        progress: show a progress bar (rank 0).
        teacher: what to record about the teacher in ``OUT/meta.json``; its "prompts_sha256"
            (:func:`prompts_fingerprint`) lets :func:`check_pseudo_labels` recognise the teacher.

    Returns:
        The number of files this process wrote.
    """
    from tqdm import tqdm

    from ..distributed import barrier, is_distributed
    from ..viz import colorize

    rank, world_size = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if is_distributed() else (0, 1)
    names, label_map, unseen = transfer_vocabulary(dataset, label_void)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    for index in tqdm(range(rank, len(dataset), world_size), desc="pseudo-labels", unit="image",
                      disable=not progress or rank != 0):
        image, label = dataset.load(index)  # (H, W, 3) uint8, (H, W) int64 in the dataset's label space
        resized = segmenter.resize(image)
        output = segmenter.predict_torch(resized, names)
        labels = torch.from_numpy(label_map[label])[None]  # (1, H, W) training labels with markers
        with torch.inference_mode():
            scores = teacher_scores(output, unseen, use_gpr)[0]  # (U, h, w) log-probabilities on the feature grid
            # Brought to the image's own size exactly as inference brings its maps (upsampled log-probabilities).
            _, probabilities = segmenter.upsample_log_scores(scores, tuple(resized.shape[-2:]), label.shape, True)
            result = assign_unseen(labels, probabilities.log()[None], unseen, confidence,
                                   dataset.info.ignore_index)[0]
        result = torch.where(result >= VOID, torch.full_like(result, dataset.info.ignore_index), result)
        picture = colorize(result.numpy())
        # (type: ignore: mypy cannot infer a lambda with a default argument)
        atomic_write(folder / f"{dataset.ids[index]}.png",
                     lambda tmp, picture=picture: picture.save(tmp, format="PNG"))  # type: ignore[misc]
        written += 1
    barrier()
    if rank == 0:
        meta = {"dataset": dataset.info.name, "images": len(dataset), "class_names": names,
                "unseen": [names[i] for i in unseen], "use_gpr": use_gpr, "label_void": label_void,
                "confidence": confidence, "teacher": teacher or {}}
        write_text(folder / "meta.json", json.dumps(meta, indent=2) + "\n")
    return written


def prompts_fingerprint(source: str | os.PathLike[str]) -> str:
    """The SHA-256 of a prompt checkpoint's bytes: which teacher wrote a pseudo-label folder.

    ``source`` is what ``--prompts`` takes: a file, a model folder or a Hub id, resolved to its file as
    loading resolves it (:func:`mvpseg.build.local_checkpoint`), so the same teacher gives the same digest.
    """
    from ..build import local_checkpoint

    path = local_checkpoint(source, "prompts")
    assert path is not None
    if not Path(path).is_file():
        raise DataLayoutError(f"prompt checkpoint not found: {path}")
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_pseudo_labels(folder: str | os.PathLike[str], dataset: SegmentationDataset, prompts: str | os.PathLike[str],
                        use_gpr: bool, label_void: bool, confidence: float) -> None:
    """Refuse a pseudo-label folder written for another run: its ``meta.json`` must name this dataset, its class
    names, its unseen classes, this teacher (the prompt file's fingerprint) and these rule options.

    Labels written for another class list or a smaller unseen set would give the student unseen ground
    truth for the whole teacher phase; options of the rule have no effect once the labels are written,
    so they must be those the labels were written with.

    Raises:
        DataLayoutError: no readable meta.json, or a mismatch (the message names every difference).
    """
    path = Path(folder) / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DataLayoutError(f"{path} is missing or unreadable ({type(error).__name__}): write the labels with "
                              f"mvpseg pseudo-label") from error
    names, _, unseen = transfer_vocabulary(dataset, label_void)
    expected = {"dataset": dataset.info.name, "class_names": names, "unseen": [names[i] for i in unseen],
                "teacher prompts_sha256": prompts_fingerprint(prompts), "use_gpr (--teacher-gpr)": use_gpr,
                "label_void": label_void, "confidence (--unseen-min-probability)": confidence}
    found = {**meta, "teacher prompts_sha256": (meta.get("teacher") or {}).get("prompts_sha256"),
             "use_gpr (--teacher-gpr)": meta.get("use_gpr"),
             "confidence (--unseen-min-probability)": meta.get("confidence")}
    differing = [key for key, value in expected.items() if found.get(key) != value]
    if differing:
        details = "; ".join(f"{key}: labels {_short(found.get(key))}, run {_short(expected[key])}" for key in differing)
        raise DataLayoutError(f"the pseudo-labels in {folder} were written for another run ({details}): write them "
                              f"again with mvpseg pseudo-label for this dataset, split and teacher")


def pseudo_label_dataset(dataset: SegmentationDataset, folder: str | os.PathLike[str]) -> SegmentationDataset:
    """The training split with its labels read from a pseudo-label folder (labels already in the class space).

    Raises:
        DataLayoutError: the folder misses labels of some images of the split.
    """
    folder = Path(folder)
    paths = [folder / f"{image_id}.png" for image_id in dataset.ids]
    present = set(os.listdir(folder)) if folder.is_dir() else set()
    missing = [path for path in paths if path.name not in present]
    if missing:
        raise DataLayoutError(
            f"pseudo-labels missing for {len(missing)} of {len(paths)} images (first: {missing[0]}): "
            f"write them with mvpseg pseudo-label for this dataset and split"
        )
    lut = np.full(256, -1, dtype=np.int64)
    lut[: dataset.info.num_classes] = np.arange(dataset.info.num_classes)
    lut[dataset.info.ignore_index] = dataset.info.ignore_index
    return SegmentationDataset(dataset.info, dataset.ids, dataset.image_paths, paths, lut, seed=dataset.seed,
                               split=dataset.split)
