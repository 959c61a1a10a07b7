"""Confusion matrix and mIoU(S) / mIoU(U) / hIoU against numbers computed by hand."""

from __future__ import annotations

import pytest
import torch

from mvpseg.metrics import ConfusionMatrix, format_table

NAMES = ("sky", "grass", "car", "boat")

# Ten pixels; the eighth is ignored. Class 3 (boat) is in neither ground truth nor prediction.
TARGET = torch.tensor([0, 0, 0, 1, 1, 2, 2, 255, 2, 0])
PRED = torch.tensor([0, 0, 1, 1, 2, 2, 2, 0, 0, 0])
# By hand, rows = ground truth, columns = prediction:
#   gt 0: pred 0 x3, pred 1 x1      gt 1: pred 1 x1, pred 2 x1      gt 2: pred 0 x1, pred 2 x2
MATRIX = [[3, 1, 0, 0], [0, 1, 1, 0], [1, 0, 2, 0], [0, 0, 0, 0]]
# I = (3, 1, 2); gt totals (4, 2, 3); prediction totals (4, 2, 3); U = gt + pred - I = (5, 3, 4).
IOU = {"sky": 60.0, "grass": 100 / 3, "car": 50.0, "boat": None}
MIOU = 430 / 9  # (60 + 33.33 + 50) / 3
MIOU_SEEN = 140 / 3  # sky, grass: (60 + 33.33) / 2
MIOU_UNSEEN = 50.0  # car
HIOU = 1400 / 29  # 2 * (140/3) * 50 / (140/3 + 50)
PIXEL_ACC = 200 / 3  # 6 correct of 9 labelled pixels


def filled() -> ConfusionMatrix:
    cm = ConfusionMatrix(num_classes=4)
    cm.update(PRED[:4].reshape(2, 2), TARGET[:4].reshape(2, 2))  # any shape
    cm.update(PRED[4:], TARGET[4:])
    return cm


def test_matrix_by_hand() -> None:
    cm = filled()
    assert cm.matrix.dtype == torch.int64
    assert cm.matrix.tolist() == MATRIX
    cm.all_reduce()  # no process group: a no-op
    assert cm.matrix.tolist() == MATRIX


def test_metrics_by_hand() -> None:
    metrics = filled().compute(NAMES, unseen=[2])
    assert metrics["miou"] == pytest.approx(MIOU)
    assert metrics["miou_seen"] == pytest.approx(MIOU_SEEN)
    assert metrics["miou_unseen"] == pytest.approx(MIOU_UNSEEN)
    assert metrics["hiou"] == pytest.approx(HIOU)
    assert metrics["pixel_acc"] == pytest.approx(PIXEL_ACC)
    assert metrics["per_class"].keys() == IOU.keys()
    for name, value in IOU.items():
        assert metrics["per_class"][name] == (None if value is None else pytest.approx(value))
    assert filled().compute(NAMES, unseen=["car"]) == metrics  # names or indices


def test_no_unseen_group() -> None:
    metrics = filled().compute(NAMES)
    assert metrics["miou_seen"] == pytest.approx(MIOU)
    assert metrics["miou_unseen"] is None and metrics["hiou"] is None


def test_predicted_but_absent_class_counts_as_zero() -> None:
    cm = ConfusionMatrix(num_classes=3)
    cm.update(torch.tensor([0, 2, 1]), torch.tensor([0, 0, 1]))
    # sky: I 1, U 2 -> 50; grass: 100; car: predicted once, never in gt -> IoU 0, still averaged.
    metrics = cm.compute(NAMES[:3], unseen=[2])
    assert metrics["per_class"] == {"sky": 50.0, "grass": 100.0, "car": 0.0}
    assert metrics["miou"] == pytest.approx(50.0)
    assert metrics["miou_unseen"] == 0.0 and metrics["hiou"] == 0.0


def test_ignore_and_validation() -> None:
    cm = ConfusionMatrix(num_classes=3, ignore_index=255)
    cm.update(torch.tensor([[1, 2], [0, 0]]), torch.full((2, 2), 255))
    assert cm.matrix.sum().item() == 0
    assert cm.compute(NAMES[:3])["miou"] is None and cm.compute(NAMES[:3])["pixel_acc"] is None
    with pytest.raises(ValueError, match=r"\[7\]"):
        cm.update(torch.tensor([0, 1]), torch.tensor([7, 1]))
    with pytest.raises(ValueError, match="prediction values"):
        cm.update(torch.tensor([3, 1]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="shapes differ"):
        cm.update(torch.tensor([0, 1]), torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="names"):
        cm.compute(NAMES)
    custom_ignore = ConfusionMatrix(num_classes=2, ignore_index=-1)
    custom_ignore.update(torch.tensor([0, 1, 1]), torch.tensor([0, -1, 1]))
    assert custom_ignore.matrix.tolist() == [[1, 0], [0, 1]]


def test_format_table() -> None:
    table = format_table(filled().compute(NAMES, unseen=[2]), unseen_names=["car"])
    lines = table.splitlines()
    assert "mIoU 47.78" in lines[0] and "hIoU 48.28" in lines[0] and "pixel acc 66.67" in lines[0]
    rows = {line.split()[0]: line.split()[1:] for line in lines[3:]}
    assert rows["car"] == ["50.00", "(U)"]
    assert rows["grass"] == ["33.33", "(S)"]
    assert rows["boat"] == ["-", "(S)"]
