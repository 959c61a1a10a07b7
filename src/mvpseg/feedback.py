"""ResCLIP's semantic feedback refinement (SFR): a first segmentation of a window steers its last block's attention.

ResCLIP's ViT mode (``vit_mode="resclip"``) is two parts: RCS (the middle blocks' attention mixed into the last
block's, :mod:`mvpseg.dense`) and SFR, which needs the class names and so runs only where the Segmenter scores
templates (``DenseOptions.resclip_sfr``; the ``resclip`` protocol turns it on, as ResCLIP's segmentor always does).
For each window, as ResCLIP's ``clip/model.py`` computes it (``create_logit_temp``, ``create_patch_matrix``,
``generate_attention_sfr``, ``custom_attn``):

1. the RCS features of the window against every name's text embedding, upsampled (bilinear) to the window's
   pixels, refined by PAMR (10 steps, dilations 8 and 16) on the window itself, ``softmax(logit_scale * .)`` over
   the names;
2. each pixel's best name, name 0 where its probability is below ``sfr_threshold`` (ResCLIP's ``temp_thd``),
   and each patch's most frequent name (``torch.mode`` over its pixels);
3. ``S[i, j] = 1`` for patches of the same name (and ``i = j``); where the straight path sampled from i towards j
   leaves i's name, ``S[i, j]`` decays by ``exp(-d / d_max)`` (d the Chebyshev distance; the path is sampled in
   ``d_max + 1`` steps of ``1 / d_max`` and cut after d of them, as ResCLIP's ``check_path`` samples it: only the
   first ``d / d_max`` of the way for nearer pairs);
4. each row of S smoothed by a 1-D Gaussian along the flattened patch index (NACLIP's std, a kernel of
   ``6 std + 1`` taps, zero-padded), negatives cut, rows normalised to sum 1, the CLS row and column 0, then
   divided by its largest value and rounded through float16 (as ResCLIP's ``attn_sfr.to(torch.float16)``);
5. the last block's logits become ``tau * ((1 - lambda) * k k^T s + lambda * S) + Omega`` before the softmax
   (``sfr_tau``, ``sfr_lambda``: ResCLIP's ``attn_sfr_weights``), RCS after it as without SFR.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .pamr import pamr

__all__ = ["SFR_PAMR_DILATIONS", "SFR_PAMR_STEPS", "SemanticFeedback", "feedback_attention", "patch_labels"]

SFR_PAMR_STEPS, SFR_PAMR_DILATIONS = 10, (8, 16)  # fixed in ResCLIP's create_logit_temp


def patch_labels(probabilities: torch.Tensor, grid: tuple[int, int], patch: int, threshold: float) -> torch.Tensor:
    """Each patch's most frequent name (h, w) int64, from one window's name probabilities (N, H, W).

    A pixel's name is its best one, or name 0 where that one's probability is below ``threshold``; pixels past
    the last whole patch are not counted.
    """
    labels = probabilities.argmax(dim=0)  # (H, W)
    labels[probabilities.amax(dim=0) < threshold] = 0
    rows, cols = grid
    patches = labels[: rows * patch, : cols * patch].unfold(0, patch, patch).unfold(1, patch, patch)  # (h, w, p, p)
    return torch.mode(patches.reshape(rows, cols, patch * patch), dim=-1).values  # (h, w, p*p) -> (h, w)


def _path_kept(labels: torch.Tensor, budget: int = 2**24) -> tuple[torch.Tensor, torch.Tensor]:
    """For every pair of patches (i, j), i-major: whether the path sampled from i towards j keeps i's name (L, L)
    and the pair's Chebyshev distance (L, L). Rows of i are taken a block at a time, about ``budget`` path points
    each (a whole 2048 x 205 image has 1536 patches: 2.4 million pairs of 128 points)."""
    rows, cols = labels.shape
    count = rows * cols
    index = torch.arange(count, device=labels.device)
    coords = torch.stack([index // cols, index % cols], dim=-1)  # (L, 2): (row, column)
    steps = (coords[None] - coords[:, None]).abs().amax(dim=-1)  # (L, L)
    longest = int(steps.max())
    t = torch.linspace(0, 1, steps=longest + 1, device=labels.device)[None, None, :, None]  # (1, 1, S+1, 1)
    kept = torch.empty(count, count, dtype=torch.bool, device=labels.device)
    block = max(budget // (count * (longest + 1)), 1)
    for first in range(0, count, block):
        start = coords[first : first + block, None, None]  # (b, 1, 1, 2): i's
        points = (start * (1 - t) + coords[None, :, None] * t).round().long()  # (b, L, S+1, 2)
        counted = torch.arange(longest + 1, device=labels.device) <= steps[first : first + block, :, None]  # (b, L, S+1)
        same = labels[points[..., 0], points[..., 1]] == labels.flatten()[first : first + block, None, None]
        kept[first : first + block] = (same | ~counted).all(dim=-1)
    return kept, steps


def feedback_attention(labels: torch.Tensor, std: float) -> torch.Tensor:
    """SFR's attention (1 + L, 1 + L) float32 from the patches' names (h, w), CLS first: steps 3 and 4 above."""
    rows, cols = labels.shape
    count = rows * cols
    flat = labels.flatten()
    same = (flat[:, None] == flat[None, :]).float()  # (L, L); the diagonal is 1
    kept, steps = _path_kept(labels)
    longest = float(steps.max())
    if longest > 0:  # one patch: no pair to decay
        same = torch.where(kept, same, same * torch.exp(-steps.float() / longest))
    size = min(count, int(6 * std + 1))
    size += 1 - size % 2  # odd
    taps = (torch.arange(size, device=labels.device) - size // 2).float()
    kernel = torch.exp(-taps.square() / (2 * std**2))
    kernel = kernel / kernel.sum()
    blurred = F.relu(F.conv1d(same[:, None], kernel.view(1, 1, -1), padding=size // 2)[:, 0])  # (L, 1, L) -> (L, L)
    attention = torch.zeros(1 + count, 1 + count, device=labels.device)
    attention[1:, 1:] = blurred / (blurred.sum(dim=1, keepdim=True) + 1e-8)
    return (attention / attention.max()).half().float()


@dataclass(frozen=True)
class SemanticFeedback:
    """The feedback of one vocabulary: what :func:`mvpseg.dense.dense_features` calls between its two passes of
    the last block (``feedback=``).

    Attributes:
        text: (N, D) normalised embeddings of every name (the template classifier's).
        logit_scale: the scale of the first segmentation's softmax (the protocol's ``logit_scale``).
        threshold: a pixel whose best name is less probable than this counts as name 0 (``temp_thd``).
        std: the Gaussian's standard deviation, in patches (NACLIP's).
    """

    text: torch.Tensor
    logit_scale: float
    threshold: float
    std: float
    pamr_steps: int = SFR_PAMR_STEPS
    pamr_dilations: Sequence[int] = SFR_PAMR_DILATIONS

    def __call__(self, images: torch.Tensor, tokens: torch.Tensor, patch: int) -> torch.Tensor:
        """SFR's attention (B, 1 + L, 1 + L) of windows (B, 3, H, W) from their first pass's projected patch
        tokens (B, L, D), L = (H // patch) * (W // patch)."""
        batch, height, width = images.shape[0], images.shape[-2], images.shape[-1]
        grid = (height // patch, width // patch)
        features = F.normalize(tokens.float(), dim=-1)
        logits = (features @ self.text.float().T).permute(0, 2, 1)  # (B, L, N) -> (B, N, L)
        logits = logits.reshape(batch, -1, *grid)  # (B, N, L) -> (B, N, h, w)
        logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)  # (B, N, H, W)
        logits = pamr(images.float(), logits, self.pamr_steps, self.pamr_dilations)
        probabilities = torch.softmax(logits * self.logit_scale, dim=1)  # (B, N, H, W)
        return torch.stack([feedback_attention(patch_labels(window, grid, patch, self.threshold), self.std)
                            for window in probabilities])
