"""The evaluation loop: a :class:`Segmenter` over a whole dataset split, one confusion matrix.

The protocol of METHOD.md section 3: every image of the split is segmented at its dataset's
inference size (short side 512, Context 520; sliding 512-px windows with stride 426, or the whole
image), the prediction is brought back to the label's own size, and intersection and union are
accumulated per class over the whole split. mIoU, mIoU(S), mIoU(U), hIoU and pixel accuracy
come from :class:`mvpseg.metrics.ConfusionMatrix`.

Class names are a runtime argument: prompts trained on one dataset are evaluated on another by
handing the second dataset (and, if wanted, its own vocabulary, synonyms included) to :func:`evaluate`. Under
``torchrun`` each rank segments every world_size-th image and the matrices are summed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from .config import EVAL_PRESETS, to_dict
from .data.classes import canonical_name, unseen_indices
from .data.datasets import SegmentationDataset
from .distributed import all_reduce_sum, is_distributed
from .files import write_text
from .inference import InferenceConfig, Segmenter
from .metrics import ConfusionMatrix
from .version import __version__
from .vocabulary import ClassNames, Vocabulary

__all__ = ["accumulate", "dataset_preset", "evaluate", "evaluation_setup", "inference_preset", "write_metrics"]

def inference_preset(dataset: str, **overrides: Any) -> InferenceConfig:
    """The standard evaluation settings of a dataset (:data:`mvpseg.config.EVAL_PRESETS`).

    Args:
        dataset: any dataset name (aliases accepted); one without a preset of its own (the benchmarks
            outside MVP-SEG's protocol: voc21, coco-object, cityscapes, ade20k, ade847, pc459) takes
            the "custom" preset.
        **overrides: InferenceConfig fields to change (mode, crop_size, stride, short_side, ...).

    Returns:
        InferenceConfig with the dataset's short side, sliding windows of 512 with stride 426.
    """
    return InferenceConfig(**{**dataset_preset(EVAL_PRESETS, dataset), **overrides})


def dataset_preset(presets: dict[str, dict[str, Any]], dataset: str) -> dict[str, Any]:
    """A dataset's entry of a preset table, the "custom" entry for a dataset that has none.

    Args:
        presets: :data:`mvpseg.config.EVAL_PRESETS` or :data:`mvpseg.config.STUDENT_EVAL_PRESETS`.
        dataset: a dataset name or alias.
    """
    return presets.get(canonical_name(dataset), presets["custom"])


def _unseen_classes(class_names: Sequence[str], unseen: Sequence[int | str]) -> list[int]:
    """Unseen classes given as indices or names -> sorted indices, checked before any image is read."""
    names = [u for u in unseen if isinstance(u, str)]
    indices = set(unseen_indices(class_names, names, source="the unseen list")) if names else set()
    for u in unseen:
        if isinstance(u, str):
            continue
        if not 0 <= int(u) < len(class_names):
            raise ValueError(f"unseen class index {u} outside 0..{len(class_names) - 1}")
        indices.add(int(u))
    return sorted(indices)


def evaluate(
    segmenter: Segmenter,
    dataset: SegmentationDataset,
    class_names: Sequence[ClassNames] | None = None,
    unseen: Sequence[int | str] | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Segment every image of a split and score it against its labels.

    Images and labels are read without the dataset's transform (original sizes); each image is
    segmented with the segmenter's own InferenceConfig and no background class (VOC's and
    Context's backgrounds are ignore pixels). Under torch.distributed, rank r takes the samples
    r, r + world_size, ...; the confusion matrix is summed over ranks and every rank returns
    the same metrics.

    Args:
        segmenter: a :class:`Segmenter` (learned prompts or the template baseline).
        dataset: a :class:`SegmentationDataset`, e.g. from :func:`mvpseg.data.build_dataset`.
        class_names: the C classes the labels' indices stand for, as given to the text tower, each a
            name or a sequence of names (synonyms: the class scores as the best of them; the first
            names the class in the metrics); default the dataset's (its ``prompt_names`` when it has
            them, keyed by its class names). Must have as many classes as the dataset.
        unseen: unseen classes (indices or names) for mIoU(U) and hIoU; default the dataset's split.
        limit: evaluate only the first ``limit`` samples of the split (smoke tests).
        progress: show a tqdm bar (rank 0 only).

    Returns:
        {"miou", "miou_seen", "miou_unseen", "hiou", "pixel_acc": percent or None,
        "per_class": {name: IoU percent or None}, "num_images": int}; see
        :meth:`mvpseg.metrics.ConfusionMatrix.compute`.

    Raises:
        ValueError: a vocabulary of the wrong length, unknown unseen classes, a bad limit.
        DataLayoutError: a sample cannot be read or its label is outside the label space.
    """
    from tqdm import tqdm

    info = dataset.info
    vocabulary = Vocabulary.of(list(class_names) if class_names is not None else info.text_classes)
    names = vocabulary.display_names if class_names is not None else list(info.class_names)
    if len(vocabulary.classes) != info.num_classes:
        raise ValueError(
            f"{len(vocabulary.classes)} class names for a dataset whose labels have {info.num_classes} classes "
            f"({info.name}): give one name per label index"
        )
    unseen_idx = _unseen_classes(names, list(info.unseen) if unseen is None else list(unseen))
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of images, not {limit}")
    total = len(dataset) if limit is None else min(limit, len(dataset))
    rank, world_size = 0, 1
    if is_distributed():
        rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()

    matrix = ConfusionMatrix(len(names), ignore_index=info.ignore_index)
    indices = range(rank, total, world_size)
    count = accumulate(segmenter, dataset, vocabulary, matrix,
                       tqdm(indices, desc=f"eval {info.name}", unit="image", disable=not progress or rank != 0))
    matrix.matrix = all_reduce_sum(matrix.matrix)
    num_images = int(all_reduce_sum(torch.tensor([count], dtype=torch.int64))[0])
    metrics = matrix.compute(names, unseen_idx)
    metrics["num_images"] = num_images
    return metrics


def accumulate(segmenter: Segmenter, dataset: SegmentationDataset, vocabulary: Vocabulary, matrix: ConfusionMatrix,
               indices: Iterable[int]) -> int:
    """Segment the samples ``indices`` of a split and add them to ``matrix``: :func:`evaluate`'s loop, for a caller
    that keeps the matrix itself (``mvpseg benchmark`` checkpoints it every few images).

    Args:
        segmenter: the segmenter, with its InferenceConfig.
        dataset: the split; samples are read without its transform (original sizes).
        vocabulary: the C classes as the text tower scores them (index k: label k).
        matrix: the (C, C) confusion matrix the images are added to.
        indices: sample indices, in the order they are segmented.

    Returns:
        How many images were added.
    """
    count = 0
    for index in indices:
        image, label = dataset.load(index)  # (H, W, 3) uint8, (H, W) int64 in 0..C-1 or ignore
        prediction = segmenter.predict(image, vocabulary)  # labels (H, W) at the image's, i.e. the label's, size
        matrix.update(torch.from_numpy(prediction.labels), torch.from_numpy(label))
        count += 1
    return count


def evaluation_setup(
    segmenter: Segmenter,
    dataset: SegmentationDataset,
    split: str,
    prompts: str | os.PathLike[str] | None,
    class_names: Sequence[str] | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """What was evaluated, for the ``"setup"`` entry of metrics.json.

    Args:
        segmenter: the segmenter evaluated.
        dataset: the dataset evaluated.
        split: its split name.
        prompts: the prompt checkpoint, or None for MaskCLIP's templates.
        class_names: the vocabulary used, when not the dataset's (names or sequences of synonyms).
        limit: the sample limit, if any.

    Returns:
        A JSON-serialisable dict: dataset, split, image count and the official one, data root, clip,
        prompts, inference settings, class names (and each class's prompt names where they differ),
        unseen names, limit, world size, mvpseg version.
    """
    info = dataset.info
    if class_names is not None:
        vocabulary = Vocabulary.of(list(class_names), warn=False)
        names, texts = vocabulary.display_names, [list(entry) for entry in vocabulary.classes]
    else:
        names, texts = list(info.class_names), [list(entry) for entry in info.text_classes]
    root = os.path.commonpath([str(p) for p in dataset.image_paths]) if dataset.image_paths else None
    return {
        "dataset": info.name,
        "split": split,
        "split_images": len(dataset),
        "official_images": dataset.official_size,
        "images_folder": root,
        "clip": None if segmenter.clip is None else {"name": segmenter.clip.name, "pretrained": segmenter.clip.pretrained},
        "prompts": str(prompts) if prompts is not None else "templates (MaskCLIP baseline)",
        "inference": to_dict(segmenter.config),
        "class_names": names,
        "prompt_names": {name: text for name, text in zip(names, texts) if text != [name]},
        "unseen": [names[i] for i in info.unseen],
        "limit": limit,
        "world_size": torch.distributed.get_world_size() if is_distributed() else 1,
        "device": str(segmenter.device),
        "mvpseg_version": __version__,
    }


def write_metrics(out_dir: str | os.PathLike[str], metrics: dict[str, Any],
                  extra: dict[str, Any] | None = None) -> Path:
    """Write ``out_dir/metrics.json`` atomically.

    Args:
        out_dir: the output folder (created if needed).
        metrics: the output of :func:`evaluate`.
        extra: the evaluation setup (dataset, split, clip, prompts, inference settings), stored
            under the key ``"setup"``.

    Returns:
        The path of metrics.json.
    """
    payload = dict(metrics)
    if extra is not None:
        payload["setup"] = extra
    text = json.dumps(payload, indent=2, default=str) + "\n"
    return write_text(Path(out_dir) / "metrics.json", text)
