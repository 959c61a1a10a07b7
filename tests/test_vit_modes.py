"""Every ViT dense mode against its authors' code, transcribed in ``vit_references.py``: on a randomly initialised
ViT-B/16 and on one whose attention is peaked, at its own 224-px size and off it (448 x 448 and 336 x 448, the
positional embedding resized as the authors' code resizes it); NACLIP, ResCLIP's RCS and SC-CLIP also on a random
ViT-L/14 (24 blocks, width 1024) with each author's ViT-L settings."""

from __future__ import annotations

import itertools
import math

import open_clip
import pytest
import torch
import torch.nn.functional as F
import vit_references as ref
from open_clip.model import _build_vision_tower

from mvpseg.config import DenseOptions
from mvpseg.dense import (
    PUBLISHED_LAYERS,
    VIT_MODES,
    _fill_outliers,
    _outlier_tokens,
    _scaled_range,
    dense_features,
    layer_choices,
    neighbourhood_bias,
)
from mvpseg.feedback import SemanticFeedback, feedback_attention
from mvpseg.positions import resized_positions


@pytest.fixture(scope="module")
def vit_b16() -> torch.nn.Module:
    torch.manual_seed(0)
    return open_clip.create_model("ViT-B-16", pretrained=None).eval().visual


@pytest.fixture(scope="module")
def vit_b16_peaked(vit_b16: torch.nn.Module) -> torch.nn.Module:
    """The random ViT-B/16 made more like a trained one (:func:`vit_references.peaked`)."""
    return ref.peaked(vit_b16)


@pytest.fixture(scope="module")
def vit_l14() -> torch.nn.Module:
    """A random ViT-L/14 image tower (24 blocks, width 1024, 16 heads) made for 112-px images (an 8 x 8 grid,
    its own positions: no interpolation), so the authors' code and mvpseg see the same tokens in about a second."""
    torch.manual_seed(0)
    config = open_clip.get_model_config("ViT-L-14")
    return _build_vision_tower(config["embed_dim"], {**config["vision_cfg"], "image_size": 112}).eval()


def _tokens(features: torch.Tensor) -> torch.Tensor:
    return features.flatten(2).transpose(1, 2)  # (B, D, h, w) -> (B, h*w, D)


def _cosine(ours: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-token cosine of (B, D, h, w) features against (B, h*w, D) reference tokens: (B, h*w)."""
    return F.cosine_similarity(_tokens(ours), reference, dim=-1)


#: (weights, (H, W)): the towers and sizes every mode is checked at; two images at 224 px, one elsewhere.
CASES = [("random", (224, 224)), ("peaked", (224, 224)), ("random", (448, 448)), ("peaked", (336, 448))]
AUTHORS = DenseOptions(position_resize="authors")


@pytest.fixture(scope="module")
def case(vit_b16, vit_b16_peaked):
    """(weights, size) -> (tower, images, the authors' blocks before the last on them), each made once."""
    towers = {"random": vit_b16, "peaked": vit_b16_peaked}
    made: dict = {}

    def make(weights: str, size: tuple[int, int]):
        if (weights, size) not in made:
            count = 2 if size == (224, 224) and weights == "random" else 1
            images = ref.regions(count, max(size))[:, :, : size[0], : size[1]]
            with torch.no_grad():
                made[weights, size] = towers[weights], images, ref.trunk(towers[weights], images)
        return made[weights, size]

    return make


def _authors_settings(mode: str, size: tuple[int, int]) -> dict:
    # SC-CLIP's code places an outlier at (index // rows, index % rows): right on square grids only. On another
    # grid its mean interpolation reads the wrong neighbours or indexes past the grid; mvpseg divides by the
    # columns, and the reference is told to (the one line where mvpseg differs from SC-CLIP's code).
    return {"outlier_row_length": "columns"} if mode == "scclip" and size[0] != size[1] else {}


@pytest.mark.parametrize("weights, size", CASES, ids=[f"{w}-{h}x{wd}" for w, (h, wd) in CASES])
@pytest.mark.parametrize("mode", VIT_MODES)
def test_every_mode_is_its_authors_code_at_224_and_off_it(case, mode, weights, size) -> None:
    visual, images, trunk = case(weights, size)
    with torch.no_grad():
        ours = dense_features(visual, images, vit_mode=mode, options=AUTHORS)
        expected = ref.TAILS[mode](visual, trunk, **_authors_settings(mode, size))
    assert ours.shape == (len(images), 512, size[0] // 16, size[1] // 16)
    assert _cosine(ours, expected).min() >= 0.99999, (mode, _cosine(ours, expected).min())
    torch.testing.assert_close(_tokens(ours), expected, atol=1e-4, rtol=0)


def test_the_authors_modes_differ_from_each_other(case) -> None:
    # so that a mode wired to another's code fails the test above (qk is not vanilla, value is not maskclip, ...)
    visual, _, trunk = case("peaked", (224, 224))
    with torch.no_grad():
        features = {mode: ref.TAILS[mode](visual, trunk) for mode in VIT_MODES}
    assert set(ref.TAILS) == set(VIT_MODES)
    for first, second in itertools.combinations(VIT_MODES, 2):
        cosine = F.cosine_similarity(features[first], features[second], dim=-1)
        assert cosine.min() < 0.999, (first, second, cosine.min())


@pytest.mark.parametrize("mode, options, settings", [
    ("naclip", DenseOptions(naclip_std=2.0), {"std": 2.0}),
    ("resclip", DenseOptions(resclip_lambda=0.6), {"lam": 0.6}),  # ResCLIP's VOC-20 config
    ("resclip", DenseOptions(resclip_tau=1.5), {"tau": 1.5}),
    ("resclip", DenseOptions(naclip_std=2.0), {"std": 2.0}),  # ResCLIP's gaussian_std is NACLIP's
])
def test_mode_parameters_are_dense_options(case, mode, options, settings) -> None:
    visual, images, trunk = case("peaked", (224, 224))
    with torch.no_grad():
        ours = dense_features(visual, images, vit_mode=mode, options=options)
        expected = ref.TAILS[mode](visual, trunk, **settings)
        default = ref.TAILS[mode](visual, trunk)  # the authors' code with its default setting
    assert _cosine(ours, expected).min() >= 0.99999, (mode, settings)
    assert _cosine(ours, default).min() < 0.9999, (mode, settings)  # the setting is measurably another answer


@pytest.mark.parametrize("weights, size, threshold, sfr", [
    ("peaked", (224, 224), 0.25, (1.8, 0.7)),  # a window, ResCLIP's Context-59 settings
    ("peaked", (336, 448), 0.5, (2.2, 0.7)),  # VOC-21's whole image, its settings
    ("random", (224, 224), 0.1, (2.1, 0.6)),  # Cityscapes'
])
def test_resclip_semantic_feedback_is_its_authors_code(case, weights, size, threshold, sfr) -> None:
    visual, images, trunk = case(weights, size)
    images, trunk = images[:1], ref.trunk(visual, images[:1])
    with torch.no_grad():  # six names, each near one patch's features: the first segmentation has several names
        tokens = F.normalize(ref.TAILS["resclip"](visual, trunk)[0], dim=-1)  # (L, D)
    noise = 0.02 * torch.randn(6, 512, generator=torch.Generator().manual_seed(3))
    names = F.normalize(tokens[torch.linspace(0, len(tokens) - 1, 6).long()] + noise, dim=-1)  # (N, D)
    feedback = SemanticFeedback(names, logit_scale=40.0, threshold=threshold, std=5.0)
    options = DenseOptions(position_resize="authors", resclip_sfr=True, sfr_tau=sfr[0], sfr_lambda=sfr[1])
    with torch.no_grad():
        ours = dense_features(visual, images, vit_mode="resclip", options=options, feedback=feedback)
        expected = ref.resclip_sfr_tail(visual, trunk, images, names, threshold, sfr)
        without = ref.TAILS["resclip"](visual, trunk)
    assert _cosine(ours, expected).min() >= 0.99999, _cosine(ours, expected).min()
    torch.testing.assert_close(_tokens(ours), expected, atol=1e-4, rtol=0)
    assert _cosine(ours, without).min() < 0.999  # the feedback changed the features: the check can fail


def test_semantic_feedback_decays_patches_whose_path_leaves_their_name(vit_b16, tiny_rn) -> None:
    # Names on a 3 x 4 grid. Patch (0, 0) shares name 1 with (0, 2), (0, 3) and the last row, but every path to
    # them crosses another name: each is kept at exp(-d / 3), d its Chebyshev distance (3 the grid's largest).
    labels = torch.tensor([[1, 2, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1]])
    attention = feedback_attention(labels, std=0.1)  # a Gaussian of one tap: no smoothing
    assert attention.shape == (13, 13) and attention[0].abs().sum() == 0 and attention[:, 0].abs().sum() == 0
    near, far = math.exp(-2 / 3), math.exp(-1)
    row = torch.tensor([1, 0, near, far, 0, 0, 0, 0, near, near, near, far])
    torch.testing.assert_close(attention[1, 1:], (row / row.sum()).half().float())  # the largest entry: (0, 1)'s 1
    assert attention[2, 2] == 1.0 and attention[2].sum() == 1.0  # (0, 1) alone has name 2
    row = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0.0])  # (1, 0): its row's straight paths keep name 0
    torch.testing.assert_close(attention[5, 1:], (row / row.sum()).half().float())
    smoothed = feedback_attention(labels, std=1.0)  # 7 taps along each row of the flattened grid
    assert (smoothed[2, 1:] > 0).sum() == 5 and torch.equal(smoothed, smoothed.half().float())
    feedback = SemanticFeedback(torch.zeros(2, 512), 40.0, 0.1, 5.0)
    for visual, mode in [(vit_b16, "naclip"), (tiny_rn.model.visual, "resclip")]:  # another mode; not a ViT
        with pytest.raises(ValueError, match="resclip"):
            dense_features(visual, torch.zeros(1, 3, 64, 64), mode, feedback=feedback)


def test_positions_are_resized_as_the_authors_code_does_or_to_the_grid(vit_b16) -> None:
    for grid in [(28, 28), (21, 28), (28, 21), (7, 7), (32, 43)]:
        tokens = torch.zeros(1, 1 + grid[0] * grid[1], 768)
        expected = ref.interpolate_pos_encoding(vit_b16, tokens, grid[0] * 16, grid[1] * 16)[0]  # (1 + h*w, W)
        authors = resized_positions(vit_b16, grid, "authors")
        assert torch.equal(authors, expected), grid
        patches = vit_b16.positional_embedding[1:].reshape(1, 14, 14, 768).permute(0, 3, 1, 2)  # -> (1, W, 14, 14)
        resized = F.interpolate(patches, size=grid, mode="bicubic", align_corners=False)  # (1, W, h, w)
        by_grid = resized_positions(vit_b16, grid)  # the default
        torch.testing.assert_close(by_grid[1:], resized.flatten(2)[0].T, atol=0, rtol=0)
        assert torch.equal(by_grid[0], vit_b16.positional_embedding[0]) and torch.equal(authors[0], by_grid[0])
        assert (authors - by_grid).abs().max() > 1e-3, grid  # two samplings of the same grid
    for resize in ("grid", "authors"):  # the tower's own grid: its embedding as it is
        assert resized_positions(vit_b16, (14, 14), resize) is vit_b16.positional_embedding


def test_grid_resize_is_not_the_authors_off_224(case) -> None:
    # mvpseg's default resize on a 21 x 28 grid gives other features than the authors' code: the option matters
    visual, images, trunk = case("peaked", (336, 448))
    with torch.no_grad():
        by_grid = dense_features(visual, images, vit_mode="maskclip")
    assert _cosine(by_grid, ref.TAILS["maskclip"](visual, trunk)).min() < 0.99


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
    images = ref.regions(1, 112, seed=6)
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
