"""Where the windows go on an image: mmsegmentation's slide rule, which mvpseg and the peers share, and the padding
to whole feature cells."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used: the configs (and --help) import this module
    import torch

__all__ = ["Box", "pad_to_cells", "sliding_windows"]

#: A window on the image: (y0, y1, x0, x1) in pixels.
Box = tuple[int, int, int, int]


def sliding_windows(height: int, width: int, crop: int, stride: int) -> list[Box]:
    """Window boxes (y0, y1, x0, x1) covering an image, as mmsegmentation's slide inference does.

    The last window in each direction is shifted back to end at the border; an image smaller than
    the crop gives one window of its own size.
    """
    rows = max(height - crop + stride - 1, 0) // stride + 1
    cols = max(width - crop + stride - 1, 0) // stride + 1
    boxes = []
    for row in range(rows):
        for col in range(cols):
            y1, x1 = min(row * stride + crop, height), min(col * stride + crop, width)
            boxes.append((max(y1 - crop, 0), y1, max(x1 - crop, 0), x1))
    return boxes


def pad_to_cells(images: torch.Tensor, stride: int) -> torch.Tensor:
    """Images (B, 3, H, W) padded at the bottom and right to whole feature cells (multiples of ``stride``).

    The padding is zero: the mean colour after normalisation.
    """
    import torch.nn.functional as F

    height, width = images.shape[-2:]
    return F.pad(images, (0, math.ceil(width / stride) * stride - width, 0, math.ceil(height / stride) * stride - height))
