"""The training-free ViT modes (NACLIP, ResCLIP's RCS, SC-CLIP) against their papers' code, transcribed in
``vit_references.py``, on a randomly initialised ViT-B/16 at its own 224-px size, and on a random ViT-L/14
(24 blocks, width 1024) with each author's ViT-L settings."""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F
import vit_references as ref
from open_clip.model import _build_vision_tower

from mvpseg.dense import (
    PUBLISHED_LAYERS,
    _fill_outliers,
    _outlier_tokens,
    _scaled_range,
    dense_features,
    layer_choices,
    neighbourhood_bias,
)


@pytest.fixture(scope="module")
def vit_b16() -> torch.nn.Module:
    torch.manual_seed(0)
    return open_clip.create_model("ViT-B-16", pretrained=None).eval().visual


@pytest.fixture(scope="module")
def vit_l14() -> torch.nn.Module:
    """A random ViT-L/14 image tower (24 blocks, width 1024, 16 heads) made for 112-px images (an 8 x 8 grid,
    its own positions: no interpolation), so the authors' code and mvpseg see the same tokens in about a second."""
    torch.manual_seed(0)
    config = open_clip.get_model_config("ViT-L-14")
    return _build_vision_tower(config["embed_dim"], {**config["vision_cfg"], "image_size": 112}).eval()


def _regions(count: int, size: int, seed: int = 5) -> torch.Tensor:
    """Images of four flat regions and noise: regions give tokens similar enough for SC-CLIP's
    aggregation (similarity >= 0.4) to act, which pure noise on random weights does not."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(count, 3, size, size, generator=generator) * 0.3
    colours = torch.randn(count, 4, 3, 1, 1, generator=generator)
    half = size // 2
    images[:, :, :half, :half] += colours[:, 0]
    images[:, :, :half, half:] += colours[:, 1]
    images[:, :, half:, :] += colours[:, 2]
    images[:, :, size * 60 // 224 : size * 170 // 224, size * 80 // 224 : size * 150 // 224] = colours[:, 3]
    return images


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """Two 224-px images of four flat regions and noise."""
    return _regions(2, 224)


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


# Each author's ViT-L setting, and the ViT-B one scaled to 24 blocks that mvpseg used before (a different answer).
SCCLIP_VIT_L = {"pre_adjust_idx": 16, "post_adjust_idx": 6, "multi_start_idx": 8, "multi_end_idx": 19, "res_cls": 0.1}
SCCLIP_SCALED = {"pre_adjust_idx": 17, "post_adjust_idx": 6, "multi_start_idx": 6, "multi_end_idx": 21, "res_cls": 0.3}


@pytest.mark.parametrize("mode, reference, published, other", [
    ("naclip", ref.naclip, {}, {"std": 2.0}),  # NACLIP reads no middle block: its code is the same on any depth
    ("resclip", ref.resclip, {"layers": range(5, 9)}, {"layers": range(10, 19)}),  # ResCLIP's code: range(5, 9)
    ("scclip", ref.scclip, SCCLIP_VIT_L, SCCLIP_SCALED),  # SC-CLIP's authors for ViT-L/14 (its issue #5)
])
def test_vit_l_modes_match_their_authors_code_with_their_vit_l_settings(vit_l14, mode, reference, published,
                                                                         other) -> None:
    images = _regions(1, 112, seed=6)
    with torch.no_grad():
        ours = dense_features(vit_l14, images, vit_mode=mode)
        expected = reference(vit_l14, images, **published)
        elsewhere = reference(vit_l14, images, **other)
    assert ours.shape == (1, 768, 8, 8)
    cosine = _cosine(ours, expected)
    assert cosine.min() >= 0.9999, (mode, cosine.min())
    # a setting the authors did not publish for ViT-L (for resclip and scclip: ViT-B's scaled by depth) is far off
    assert _cosine(ours, elsewhere).min() < 0.9995, (mode, other)


def test_layer_choices_are_the_authors_for_vit_b_and_vit_l_and_scaled_elsewhere() -> None:
    vit_b, vit_l = layer_choices(11), layer_choices(23)
    assert (vit_b.rcs, vit_b.scclip_pre, vit_b.scclip_post, vit_b.scclip_fusion, vit_b.scclip_res_cls) == (
        range(5, 9), 8, 3, range(3, 10), 0.3)
    assert (vit_l.rcs, vit_l.scclip_pre, vit_l.scclip_post, vit_l.scclip_fusion, vit_l.scclip_res_cls) == (
        range(5, 9), 16, 6, range(8, 19), 0.1)
    assert set(PUBLISHED_LAYERS) == {11, 23} and "issue #5" in vit_l.source
    for count in (3, 31, 39):  # the tiny ViT, ViT-H, ViT-g: nobody published a setting
        choices = layer_choices(count)
        assert "no published setting" in choices.source and choices.scclip_res_cls == 0.3
        assert choices.rcs == _scaled_range(count, 5, 9) and choices.scclip_fusion == _scaled_range(count, 3, 10)
    with pytest.raises(ValueError, match="no"):
        layer_choices(0)


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
