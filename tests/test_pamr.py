"""PAMR (mvpseg.pamr): the refinement NACLIP's evaluation applies, against a reference written out in full."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mvpseg.pamr import affinities, pamr


def _reference(image: torch.Tensor, scores: torch.Tensor, steps: int, dilations: tuple[int, ...]) -> torch.Tensor:
    """PAMR as its formula reads, every neighbour materialised at once, borders clamped by index."""
    height, width = image.shape[-2:]
    rows, cols = torch.arange(height), torch.arange(width)

    def neighbours(x: torch.Tensor, centre: bool) -> torch.Tensor:  # (B, K, H, W) -> (B, K, P, H, W)
        out = []
        for d in dilations:
            for dy in (-d, 0, d):
                for dx in (-d, 0, d):
                    if centre or (dy, dx) != (0, 0):
                        r = (rows + dy).clamp(0, height - 1)
                        c = (cols + dx).clamp(0, width - 1)
                        out.append(x[:, :, r][:, :, :, c])
        return torch.stack(out, dim=2)

    sigma = neighbours(image, centre=True).std(dim=2, keepdim=True)  # (B, K, 1, H, W), unbiased
    distance = (image.unsqueeze(2) - neighbours(image, centre=False)).abs()  # (B, K, P, H, W)
    weights = torch.softmax((-distance / (1e-8 + 0.1 * sigma)).mean(dim=1), dim=1)  # (B, P, H, W)
    if scores.shape[-2:] != image.shape[-2:]:
        scores = F.interpolate(scores, size=(height, width), mode="bilinear", align_corners=True)
    for _ in range(steps):
        scores = (neighbours(scores, centre=False) * weights.unsqueeze(1)).sum(dim=2)
    return scores


@pytest.mark.parametrize("shape, classes, dilations, steps", [
    ((1, 3, 75, 100), 21, (8, 16), 10),   # a VOC photo's proportions, NACLIP's settings
    ((2, 3, 40, 56), 5, (1,), 3),
    ((1, 3, 12, 20), 4, (8, 16), 10),     # smaller than the dilation: every neighbour clamped
])
def test_pamr_equals_its_formula_written_out(shape: tuple[int, ...], classes: int, dilations: tuple[int, ...],
                                             steps: int) -> None:
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(*shape, generator=generator)
    image[..., : shape[2] // 2, :] += 3.0  # a flat-ish region and an edge: affinities far from uniform
    scores = torch.randn(shape[0], classes, shape[2] // 4, shape[3] // 4, generator=generator)
    expected = _reference(image, scores, steps, dilations)
    got = pamr(image, scores, steps, dilations)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    weights = affinities(image, dilations)
    assert weights.shape == (shape[0], 8 * len(dilations), *shape[2:])
    assert weights.std() > 0.01  # not uniform: the test can tell a wrong affinity


def test_pamr_ignores_per_channel_normalisation_and_follows_edges() -> None:
    image = torch.zeros(1, 3, 32, 32)
    image[:, :, :, 16:] = 1.0  # two halves
    image += 0.01 * torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    scores = torch.zeros(1, 2, 32, 32)
    scores[:, 0, :, :18] = 1.0  # class 0 spills two columns over the edge
    scores[:, 1, :, 18:] = 1.0
    normalised = (image - torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1)) / torch.tensor([0.2, 0.3, 0.25]).view(1, 3, 1, 1)
    refined = pamr(image, scores, steps=10, dilations=(1, 2))
    torch.testing.assert_close(pamr(normalised, scores, steps=10, dilations=(1, 2)), refined, atol=1e-5, rtol=1e-5)
    labels = refined.argmax(dim=1)[0]
    assert (labels[:, 16:18] == 1).float().mean() > (scores.argmax(dim=1)[0][:, 16:18] == 1).float().mean()
    torch.testing.assert_close(pamr(image, scores, steps=0), scores)


def test_bad_pamr_arguments_are_one_line() -> None:
    image, scores = torch.zeros(1, 3, 8, 8), torch.zeros(1, 2, 8, 8)
    with pytest.raises(ValueError, match="at least 0"):
        pamr(image, scores, steps=-1)
    with pytest.raises(ValueError, match="dilations must be positive"):
        pamr(image, scores, dilations=(0,))
    with pytest.raises(ValueError, match=r"images \(B, K, H, W\)"):
        pamr(image[0], scores)
