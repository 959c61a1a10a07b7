"""A ViT's positional embedding on another patch grid: the rule mvpseg uses and the one the peers' code runs
(:attr:`mvpseg.config.DenseOptions.position_resize`)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer

__all__ = ["resized_positions"]


def resized_positions(visual: VisionTransformer, grid: tuple[int, int], resize: str = "grid") -> torch.Tensor:
    """The positional embedding resized (bicubic) to a ``grid`` of patches (h, w): (1 + h*w, W).

    ``resize`` (:attr:`mvpseg.config.DenseOptions.position_resize`):

    - "grid": ``F.interpolate(size=(h, w))``: output cell i samples the g x g source at
      ``(i + 0.5) * g / h - 0.5``, the two grids' edges aligned.
    - "authors": what SCLIP, ClearCLIP, NACLIP, ResCLIP and SC-CLIP run (their ``interpolate_pos_encoding``):
      ``F.interpolate(scale_factor=((h + 0.1) / g, (w + 0.1) / g))`` with the scale used as given
      (``recompute_scale_factor`` False or unset), so the output is still h x w but cell i samples
      ``(i + 0.5) * g / (h + 0.1) - 0.5``: a grid shrunk by h / (h + 0.1) towards the top-left corner.
      Rows and columns get their own factor (non-square grids are handled alike by all five). One case
      differs: their code skips the resize whenever the token count equals the embedding's (e.g. a 7 x 28
      grid for a 14 x 14 embedding) and reads the square embedding as that grid; mvpseg resizes it.

    The embedding is returned as it is on its own g x g grid, as in all five repositories.
    """
    positions = visual.positional_embedding  # (1 + g*g, W)
    cls_position, patch_positions = positions[:1], positions[1:]
    side = int(math.isqrt(patch_positions.shape[0]))
    if (side, side) == grid:
        return positions
    width = positions.shape[1]
    patch_positions = patch_positions.reshape(1, side, side, width).permute(0, 3, 1, 2)  # -> (1, W, g, g)
    if resize == "authors":
        scale = ((grid[0] + 0.1) / side, (grid[1] + 0.1) / side)
        patch_positions = F.interpolate(patch_positions.float(), scale_factor=scale, mode="bicubic",
                                        align_corners=False, recompute_scale_factor=False)  # (1, W, h, w)
    else:
        patch_positions = F.interpolate(patch_positions.float(), size=grid, mode="bicubic", align_corners=False)
    patch_positions = patch_positions.to(positions.dtype)
    patch_positions = patch_positions.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], width)  # -> (h*w, W)
    return torch.cat([cls_position, patch_positions], dim=0)
