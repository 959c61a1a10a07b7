"""The training-free ViT modes (NACLIP, ResCLIP's RCS, SC-CLIP) against their papers' code, transcribed in
``vit_references.py``, on a randomly initialised ViT-B/16 at its own 224-px size."""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F
import vit_references as ref

from mvpseg.dense import _fill_outliers, _outlier_tokens, _scaled_range, dense_features, neighbourhood_bias


@pytest.fixture(scope="module")
def vit_b16() -> torch.nn.Module:
    torch.manual_seed(0)
    return open_clip.create_model("ViT-B-16", pretrained=None).eval().visual


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """Two 224-px images of four flat regions and noise: regions give tokens similar enough for SC-CLIP's
    aggregation (similarity >= 0.4) to act, which pure noise on random weights does not."""
    generator = torch.Generator().manual_seed(5)
    images = torch.randn(2, 3, 224, 224, generator=generator) * 0.3
    colours = torch.randn(2, 4, 3, 1, 1, generator=generator)
    images[:, :, :112, :112] += colours[:, 0]
    images[:, :, :112, 112:] += colours[:, 1]
    images[:, :, 112:, :] += colours[:, 2]
    images[:, :, 60:170, 80:150] = colours[:, 3]
    return images


def _cosine(ours: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-token cosine of (B, D, h, w) features against (B, h*w, D) reference tokens: (B, h*w)."""
    flat = ours.flatten(2).transpose(1, 2)  # (B, D, h, w) -> (B, h*w, D)
    return F.cosine_similarity(flat, reference, dim=-1)


@pytest.mark.parametrize("mode, reference, variant", [
    ("naclip", ref.naclip, {"std": 2.0}),
    ("resclip", ref.resclip, {"lam": 0.6}),
    ("scclip", ref.scclip, {"beta": 0.3}),
])
def test_mode_matches_its_papers_code(vit_b16, images, mode, reference, variant) -> None:
    with torch.no_grad():
        ours = dense_features(vit_b16, images, vit_mode=mode)
        expected = reference(vit_b16, images)
        other = reference(vit_b16, images, **variant)  # the paper's code with one setting changed
    assert ours.shape == (2, 512, 14, 14)
    cosine = _cosine(ours, expected)
    assert cosine.min() >= 0.9999, (mode, cosine.min())
    # the comparison can tell a wrong setting: the changed reference is measurably further away
    assert _cosine(ours, other).min() < 0.9995, (mode, variant)
    # and the modes differ from MaskCLIP's
    assert _cosine(ours, dense_features(vit_b16, images).flatten(2).transpose(1, 2)).mean() < 0.99


def test_naclip_bias_is_the_papers_gaussian_window() -> None:
    for grid in [(4, 4), (3, 5), (14, 20)]:
        window = ref.gaussian_window(2 * grid[0] - 1, 2 * grid[1] - 1, std=5.0)
        torch.testing.assert_close(neighbourhood_bias(grid), ref.attention_addition(*grid, window), atol=1e-6, rtol=0)
    bias = neighbourhood_bias((3, 3), std=1.0)
    assert bias[0].abs().sum() == 0 and bias[:, 0].abs().sum() == 0  # CLS row and column
    assert bias[1, 1] == 1.0 and torch.isclose(bias[1, 2], torch.exp(torch.tensor(-0.5)))  # neighbours one apart
    assert torch.isclose(bias[1, 9], torch.exp(torch.tensor(-4.0)))  # (0, 0) to (2, 2): squared distance 8


def test_outliers_are_scclips_local_outlier_factor() -> None:
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randn(3, 196, 16, generator=generator)
    tokens[1, [7, 50]] += 25.0  # two far-off tokens in the second image
    ours = _outlier_tokens(tokens)
    for image in range(3):
        indices, _ = ref.lof_pytorch(tokens[image])
        assert torch.equal(torch.nonzero(ours[image]).flatten(), indices)
    assert ours[1, 7] and ours[1, 50]
    assert ours.sum(dim=1).tolist() == [10, 10, 10]  # 5 % of 196 above the 0.95 quantile


def test_outliers_filled_from_their_neighbours() -> None:
    generator = torch.Generator().manual_seed(2)
    maps = torch.randn(1, 4, 5, 6, generator=generator)  # (B, W, h, w)
    outliers = torch.zeros(1, 30, dtype=torch.bool)
    outliers[0, [0, 1, 14]] = True  # a corner, its right neighbour, and an inner token
    tokens = maps.flatten(2).transpose(1, 2)  # (B, W, h, w) -> (B, h*w, W)
    filled = _fill_outliers(tokens, outliers, (5, 6))
    expected = ref.mean_interpolation(maps, [(0, 0), (0, 1), (2, 2)]).flatten(2).transpose(1, 2)
    torch.testing.assert_close(filled, expected, atol=1e-6, rtol=1e-6)
    # by hand: the corner's neighbours are (0, 1) (an outlier), (1, 0) and (1, 1)
    torch.testing.assert_close(filled[0, 0], (maps[0, :, 1, 0] + maps[0, :, 1, 1]) / 2)
    assert torch.equal(filled[0, 2], tokens[0, 2])  # not an outlier: unchanged


def test_layer_choices_scale_to_other_depths() -> None:
    # ViT-B/16 (11 blocks before the last): the papers' own indices
    assert _scaled_range(11, 5, 9) == range(5, 9)  # ResCLIP's RCS layers
    assert (_scaled_range(11, 8, 9).start, _scaled_range(11, 3, 4).start) == (8, 3)  # SC-CLIP pre / post
    assert _scaled_range(11, 3, 10) == range(3, 10)  # SC-CLIP's multi-level fusion
    for count in range(1, 24):  # always at least one block, all before the last
        for start, stop in [(5, 9), (8, 9), (3, 4), (3, 10)]:
            chosen = _scaled_range(count, start, stop)
            assert len(chosen) >= 1 and 0 <= chosen.start and chosen.stop <= count


@pytest.mark.parametrize("mode", ["naclip", "resclip", "scclip"])
def test_modes_run_on_any_grid_and_tiny_towers(tiny_vit, mode) -> None:
    # 2 blocks, a grid that is not square and smaller than SC-CLIP's 30 neighbours
    images = torch.randn(3, 3, 40, 56, generator=torch.Generator().manual_seed(3))
    features = dense_features(tiny_vit.model, images, vit_mode=mode)
    assert features.shape == (3, 32, 5, 7) and torch.isfinite(features).all()
    # an image on its own gives the features it has in a batch (SC-CLIP's statistics are per image)
    torch.testing.assert_close(dense_features(tiny_vit.model, images[1:2], vit_mode=mode), features[1:2],
                               atol=1e-5, rtol=1e-4)


def test_blocks_run_as_open_clips_own_forward(vit_b16) -> None:
    from mvpseg.dense import _block

    x = torch.randn(2, 197, 768, generator=torch.Generator().manual_seed(4))
    block = vit_b16.transformer.resblocks[3]
    with torch.no_grad():
        expected = block(x)
        fused, none = _block(block, x)
        written, weights = _block(block, x, keep_attention=True)
    assert none is None and weights.shape == (2, 12, 197, 197)
    torch.testing.assert_close(fused, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(written, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(2, 12, 197))
