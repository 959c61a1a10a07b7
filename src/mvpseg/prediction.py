"""What :meth:`mvpseg.Segmenter.predict` returns: one image's labels, with its scores and model output when asked."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .model import MVPSegOutput

__all__ = ["Prediction"]


@dataclass
class Prediction:
    """A segmentation of one image.

    Attributes:
        labels: (H, W) int32 class indices into ``class_names``, at the input's own resolution.
        class_names: the vocabulary, background names first when one was given.
        scores: (C, H, W) float32 final map ``softmax_c(fused) * g`` in [0, 1] (under a protocol that scores
            pixels, the class probabilities), when requested.
        presence: (C,) GPR's image-level class scores, or None without GPR.
        output: the model's output on the feature grid (:meth:`Segmenter.predict_torch`'s: each prompt's map of
            each class), when requested and the image was scored on the cells (None under ``scores_at_pixels``).
    """

    labels: np.ndarray
    class_names: list[str]
    scores: np.ndarray | None = None
    presence: np.ndarray | None = None
    output: MVPSegOutput | None = None

    def class_shares(self) -> dict[str, float]:
        """Fraction of the image's pixels given to each class (classes never predicted get 0)."""
        counts = np.bincount(self.labels.ravel(), minlength=len(self.class_names))
        total = max(int(self.labels.size), 1)
        return {name: float(count) / total for name, count in zip(self.class_names, counts.tolist())}
