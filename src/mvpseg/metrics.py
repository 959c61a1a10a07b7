"""Segmentation metrics: a confusion matrix over a whole split, mIoU(S) / mIoU(U) / hIoU.

Intersection and union are accumulated per class over every pixel of the split (not averaged
per image). IoU_c = I_c / U_c; mIoU is the mean over classes with U_c > 0 (nanmean); mIoU(S)
and mIoU(U) restrict the mean to seen / unseen classes; hIoU = 2 S U / (S + U). Values are
percentages.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist

__all__ = ["ConfusionMatrix", "format_table"]


class ConfusionMatrix:
    """Pixel counts of (ground truth, prediction) pairs, accumulated batch by batch.

    Attributes:
        num_classes: C.
        ignore_index: ground-truth value of pixels that are skipped.
        matrix: (C, C) int64; rows = ground truth, columns = prediction.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, device: str | torch.device = "cpu") -> None:
        """Args:
        num_classes: number of classes C.
        ignore_index: ground-truth value to skip.
        device: where the matrix lives (a CUDA device for NCCL all_reduce).
        """
        if num_classes <= 0:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def reset(self) -> None:
        """Zero the counts."""
        self.matrix.zero_()

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch.

        Args:
            pred: predicted class indices 0..C-1, any shape.
            target: ground truth of the same shape, 0..C-1 or ignore_index.

        Raises:
            ValueError: shapes differ, a non-integer tensor, or values out of range.
        """
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} shapes differ")
        if pred.is_floating_point() or target.is_floating_point():
            raise ValueError("pred and target must be integer class indices (take argmax of logits first)")
        device = self.matrix.device
        pred = pred.reshape(-1).to(device=device, dtype=torch.int64)  # (...) -> (N,)
        target = target.reshape(-1).to(device=device, dtype=torch.int64)  # (...) -> (N,)
        keep = target != self.ignore_index
        pred, target = pred[keep], target[keep]
        if target.numel() == 0:
            return
        bad_target = (target < 0) | (target >= self.num_classes)
        if bool(bad_target.any()):
            values = torch.unique(target[bad_target])[:8].tolist()
            raise ValueError(
                f"target values {values} are neither classes 0..{self.num_classes - 1} "
                f"nor ignore_index {self.ignore_index}"
            )
        bad_pred = (pred < 0) | (pred >= self.num_classes)
        if bool(bad_pred.any()):
            values = torch.unique(pred[bad_pred])[:8].tolist()
            raise ValueError(f"prediction values {values} outside 0..{self.num_classes - 1}")
        counts = torch.bincount(target * self.num_classes + pred, minlength=self.num_classes**2)
        self.matrix += counts.reshape(self.num_classes, self.num_classes)  # (C*C,) -> (C, C)

    def all_reduce(self) -> None:
        """Sum the matrix over all ranks when torch.distributed is initialised; else do nothing."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM)

    def iou(self) -> list[float | None]:
        """Per-class IoU ``I / U`` in [0, 1]; None for a class in neither the ground truth nor the prediction."""
        matrix = self.matrix.double().cpu()
        intersection = matrix.diag()  # (C,)
        union = matrix.sum(dim=0) + matrix.sum(dim=1) - intersection  # (C,): pred + gt - both
        return [float(intersection[c] / union[c]) if union[c] > 0 else None for c in range(self.num_classes)]

    def compute(self, class_names: Sequence[str], unseen: Sequence[int | str] = ()) -> dict:
        """The metrics of everything accumulated so far.

        Args:
            class_names: the C class names, in index order.
            unseen: unseen classes, as indices or names (empty: no unseen group).

        Returns:
            {"miou", "miou_seen", "miou_unseen", "hiou", "pixel_acc": percent float or None
            when the group has no class with a non-empty union (hiou: None unless both S and U
            exist), "per_class": {name: IoU percent, or None when the class is in neither the
            ground truth nor the prediction}}.
        """
        if len(class_names) != self.num_classes:
            raise ValueError(f"{len(class_names)} class names for {self.num_classes} classes")
        unseen_set = set()
        for u in unseen:
            if isinstance(u, str):
                if u not in class_names:
                    raise ValueError(f"unseen class {u!r} is not among the class names")
                unseen_set.add(list(class_names).index(u))
            elif 0 <= int(u) < self.num_classes:
                unseen_set.add(int(u))
            else:
                raise ValueError(f"unseen index {u} outside 0..{self.num_classes - 1}")

        matrix = self.matrix.double().cpu()
        intersection = matrix.diag()  # (C,)
        iou = [None if value is None else value * 100.0 for value in self.iou()]

        def mean(indices: Sequence[int]) -> float | None:
            values = [value for c in indices if (value := iou[c]) is not None]
            return sum(values) / len(values) if values else None

        seen = [c for c in range(self.num_classes) if c not in unseen_set]
        miou_seen, miou_unseen = mean(seen), mean(sorted(unseen_set))
        hiou = None
        if miou_seen is not None and miou_unseen is not None:
            total = miou_seen + miou_unseen
            hiou = 2.0 * miou_seen * miou_unseen / total if total > 0 else 0.0
        num_pixels = float(matrix.sum())
        return {
            "miou": mean(range(self.num_classes)),
            "miou_seen": miou_seen,
            "miou_unseen": miou_unseen,
            "hiou": hiou,
            "pixel_acc": float(intersection.sum()) / num_pixels * 100.0 if num_pixels > 0 else None,
            "per_class": dict(zip(class_names, iou, strict=True)),
        }


def _fmt(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def format_table(metrics: dict, unseen_names: Sequence[str] = ()) -> str:
    """A readable table of the output of `ConfusionMatrix.compute`.

    Args:
        metrics: the dict returned by `ConfusionMatrix.compute`.
        unseen_names: names to mark (U); the others are marked (S) when any name is unseen.

    Returns:
        A summary line, then one line per class: name, IoU, and the (S)/(U) mark.
    """
    unseen = set(unseen_names)
    summary = (
        f"mIoU {_fmt(metrics.get('miou'))} | mIoU(S) {_fmt(metrics.get('miou_seen'))} | "
        f"mIoU(U) {_fmt(metrics.get('miou_unseen'))} | hIoU {_fmt(metrics.get('hiou'))} | "
        f"pixel acc {_fmt(metrics.get('pixel_acc'))}"
    )
    per_class: dict = metrics.get("per_class", {})
    width = max([len("class"), *(len(n) for n in per_class)])
    lines = [summary, "", f"{'class':<{width}}  {'IoU':>6}"]
    for name, value in per_class.items():
        mark = ("(U)" if name in unseen else "(S)") if unseen else ""
        lines.append(f"{name:<{width}}  {_fmt(value):>6}  {mark}".rstrip())
    return "\n".join(lines)
