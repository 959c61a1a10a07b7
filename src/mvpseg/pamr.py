"""PAMR: pixel-adaptive mask refinement (Araslanov and Roth, CVPR 2020) of class score maps by the image.

NACLIP's evaluation (and SCLIP's, ResCLIP's as an option) refines the upsampled class scores with it:
every pixel's scores become, ``steps`` times over, the affinity-weighted mean of its neighbours' scores,

    a_p(i) = softmax_p( mean_k  -|x_k(i) - x_k(i + p)| / (1e-8 + 0.1 * sigma_k(i)) )
    s(i)  <- sum_p a_p(i) * s(i + p)

over the 8 neighbours ``p`` at each dilation (offsets -d, 0, +d in each direction, the centre left out),
``sigma_k(i)`` the standard deviation (unbiased) of channel ``k`` over the 3x3 neighbourhoods of every
dilation together, centre included, positions beyond the border clamped to it. The affinities are computed
once, from the image alone; the scores are never normalised in between. Per channel the affinity does
not change under ``x -> a x + b``, so any per-channel image normalisation gives the same result.

This implementation walks the neighbours one at a time: its memory is the affinities (B, P, H, W) and a
few (B, C, H, W) maps, not (B, C, P, H, W) at once (``benchmarks/pamr_bench.py`` measures both).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["PAMR_DILATIONS", "PAMR_STEPS", "pamr"]

#: NACLIP's settings (``pamr_steps=10, pamr_stride=(8, 16)``).
PAMR_STEPS = 10
PAMR_DILATIONS: tuple[int, ...] = (8, 16)


def _offsets(dilations: Sequence[int], centre: bool) -> list[tuple[int, int]]:
    """(dy, dx) of the 3x3 neighbourhood at each dilation, row by row; with or without the centre."""
    return [(dy * d, dx * d) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1)
            if centre or (dy, dx) != (0, 0)]


def _shifted(padded: torch.Tensor, pad: int, dy: int, dx: int, size: tuple[int, int]) -> torch.Tensor:
    """The map at (i + dy, j + dx), positions beyond the border clamped, from its replicate-padded copy."""
    return padded[..., pad + dy : pad + dy + size[0], pad + dx : pad + dx + size[1]]


@torch.no_grad()
def affinities(image: torch.Tensor, dilations: Sequence[int] = PAMR_DILATIONS) -> torch.Tensor:
    """PAMR's neighbour weights of an image: (B, K, H, W) -> (B, P, H, W), a softmax over the P neighbours."""
    size = (image.shape[-2], image.shape[-1])
    pad = max(dilations)
    padded = F.pad(image, [pad] * 4, mode="replicate")  # (B, K, H + 2 pad, W + 2 pad)
    window = _offsets(dilations, centre=True)
    mean = torch.zeros_like(image)  # (B, K, H, W)
    for dy, dx in window:
        mean += _shifted(padded, pad, dy, dx, size)
    mean /= len(window)
    squares = torch.zeros_like(mean)
    for dy, dx in window:
        squares += (_shifted(padded, pad, dy, dx, size) - mean).square()  # (B, K, H, W)
    scale = 1e-8 + 0.1 * (squares / (len(window) - 1)).sqrt()  # (B, K, H, W): 0.1 sigma
    logits = torch.stack([-((image - _shifted(padded, pad, dy, dx, size)).abs() / scale).mean(dim=1)
                          for dy, dx in _offsets(dilations, centre=False)], dim=1)  # (B, P, H, W)
    return torch.softmax(logits, dim=1)


@torch.no_grad()
def pamr(image: torch.Tensor, scores: torch.Tensor, steps: int = PAMR_STEPS,
         dilations: Sequence[int] = PAMR_DILATIONS) -> torch.Tensor:
    """Refine class scores with the image's local affinities.

    Args:
        image: (B, K, H, W) float, the image at the size the scores are wanted (any per-channel normalisation).
        scores: (B, C, h, w) class scores (NACLIP: the cosine logits before their scale and softmax); resized
            bilinearly (corners aligned, as the reference does) to (H, W) when their size differs.
        steps: refinement steps (0: the resized scores as they are).
        dilations: the neighbourhoods' dilations, in pixels.

    Returns:
        (B, C, H, W) refined scores, in the scores' dtype.
    """
    if steps < 0:
        raise ValueError(f"PAMR takes a number of steps of at least 0, not {steps}")
    if not dilations or min(dilations) < 1:
        raise ValueError(f"PAMR's dilations must be positive pixel counts, not {tuple(dilations)}")
    if image.ndim != 4 or scores.ndim != 4 or image.shape[0] != scores.shape[0]:
        raise ValueError(f"PAMR takes images (B, K, H, W) and scores (B, C, h, w), not {tuple(image.shape)} and "
                         f"{tuple(scores.shape)}")
    size = (image.shape[-2], image.shape[-1])
    dtype = scores.dtype
    scores = scores.float()
    if tuple(scores.shape[-2:]) != size:
        scores = F.interpolate(scores, size=size, mode="bilinear", align_corners=True)
    if steps == 0:
        return scores.to(dtype)
    weights = affinities(image.float(), dilations)  # (B, P, H, W)
    pad = max(dilations)
    offsets = _offsets(dilations, centre=False)
    for _ in range(steps):
        padded = F.pad(scores, [pad] * 4, mode="replicate")  # (B, C, H + 2 pad, W + 2 pad)
        refined = torch.zeros_like(scores)
        for index, (dy, dx) in enumerate(offsets):
            refined.addcmul_(weights[:, index : index + 1], _shifted(padded, pad, dy, dx, size))  # (B, C, H, W)
        scores = refined
    return scores.to(dtype)
