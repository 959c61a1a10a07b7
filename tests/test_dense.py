"""Dense features against independent computations from the open_clip weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import mvpseg
from mvpseg.dense import dense_features, feature_stride


def _capture(module: torch.nn.Module, run, pre: bool = False) -> torch.Tensor:
    """Run ``run()`` and return the input (pre=True) or output of ``module``."""
    seen: list[torch.Tensor] = []
    if pre:
        handle = module.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    else:
        handle = module.register_forward_hook(lambda m, args, out: seen.append(out.detach()))
    try:
        run()
    finally:
        handle.remove()
    return seen[0]


def test_resnet_matches_attention_pool_projections_as_1x1_convolutions(tiny_rn: mvpseg.ClipBundle) -> None:
    visual = tiny_rn.model.visual
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        trunk = _capture(visual.layer4, lambda: visual(images))  # open_clip's own forward up to layer4
        pool = visual.attnpool
        value = F.conv2d(trunk, pool.v_proj.weight[:, :, None, None], pool.v_proj.bias)
        expected = F.conv2d(value, pool.c_proj.weight[:, :, None, None], pool.c_proj.bias)
    features = dense_features(tiny_rn.model, images)
    assert features.shape == (2, 32, 2, 2)
    torch.testing.assert_close(features, expected, atol=1e-5, rtol=1e-5)


def test_resnet_any_input_size(tiny_rn: mvpseg.ClipBundle) -> None:
    assert dense_features(tiny_rn.model, torch.randn(1, 3, 96, 160)).shape == (1, 32, 3, 5)
    assert feature_stride(tiny_rn.model.visual) == 32


# Per mode: the self-similarities whose row-softmaxes are summed into the attention (none: each token's
# own value), and whether the block's residual and MLP are kept.
_TERMS = {"maskclip": (), "value": (), "qq": ("q",), "csa": ("q", "k")}
_RESIDUAL = {"maskclip": True, "value": False, "qq": False, "csa": True}


def _last_block_by_hand(block: torch.nn.Module, x: torch.Tensor, mode: str, terms: tuple[str, ...] | None = None,
                        residual: bool | None = None, combine: float = 1.0) -> torch.Tensor:
    """The last ViT block with q-k attention replaced, written out with plain matrix products. x: (B, L, W).

    ``terms``, ``residual`` and ``combine`` (a factor on the summed softmaxes) override the mode's
    own, to build the variants a wrong implementation would compute.
    """
    terms = _TERMS[mode] if terms is None else terms
    residual = _RESIDUAL[mode] if residual is None else residual
    width = x.shape[-1]
    heads = block.attn.num_heads
    w, b = block.attn.in_proj_weight, block.attn.in_proj_bias
    normed = F.layer_norm(x, (width,), block.ln_1.weight, block.ln_1.bias, block.ln_1.eps)
    projected = {"q": normed @ w[:width].T + b[:width], "k": normed @ w[width : 2 * width].T + b[width : 2 * width]}
    v = normed @ w[2 * width :].T + b[2 * width :]
    if terms:
        head_width = width // heads
        mixed = []
        for h in range(heads):
            cols = slice(h * head_width, (h + 1) * head_width)
            attention = sum(
                torch.softmax(projected[t][..., cols] @ projected[t][..., cols].transpose(1, 2) / head_width**0.5,
                              dim=-1)
                for t in terms
            )
            mixed.append(combine * attention @ v[..., cols])
        v = torch.cat(mixed, dim=-1)
    out = v @ block.attn.out_proj.weight.T + block.attn.out_proj.bias
    if not residual:
        return out
    y = x + out
    hidden = F.layer_norm(y, (width,), block.ln_2.weight, block.ln_2.bias, block.ln_2.eps)
    hidden = F.gelu(hidden @ block.mlp.c_fc.weight.T + block.mlp.c_fc.bias)
    return y + hidden @ block.mlp.c_proj.weight.T + block.mlp.c_proj.bias


def _features_by_hand(visual: torch.nn.Module, tokens: torch.Tensor, mode: str, **variant) -> torch.Tensor:
    """(B, D, 8, 8) features from the last block's input tokens (B, 1+64, W), the block run by hand."""
    with torch.no_grad():
        y = _last_block_by_hand(visual.transformer.resblocks[-1], tokens, mode, **variant)
        y = F.layer_norm(y, (y.shape[-1],), visual.ln_post.weight, visual.ln_post.bias, visual.ln_post.eps)
        return (y[:, 1:] @ visual.proj).transpose(1, 2).reshape(tokens.shape[0], -1, 8, 8)  # drop CLS


@pytest.mark.parametrize("mode", ["maskclip", "value", "qq", "csa"])
def test_vit_matches_last_block_rerun_by_hand(tiny_vit: mvpseg.ClipBundle, mode: str) -> None:
    visual = tiny_vit.model.visual
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        tokens = _capture(visual.transformer.resblocks[-1], lambda: visual(images), pre=True)  # (B, 1+64, W)
        y = _last_block_by_hand(visual.transformer.resblocks[-1], tokens, mode)
        y = F.layer_norm(y, (y.shape[-1],), visual.ln_post.weight, visual.ln_post.bias, visual.ln_post.eps)
        expected = (y[:, 1:] @ visual.proj).transpose(1, 2).reshape(2, 32, 8, 8)
    features = dense_features(tiny_vit.model, images, vit_mode=mode)
    torch.testing.assert_close(features, expected, atol=1e-5, rtol=1e-4)


def test_csa_sums_qq_and_kk_softmaxes_and_keeps_residual_and_mlp(tiny_vit: mvpseg.ClipBundle) -> None:
    # SCLIP: x + out_proj((softmax(q q^T s) + softmax(k k^T s)) v), then x + mlp(ln_2 x).
    visual = tiny_vit.model.visual
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        tokens = _capture(visual.transformer.resblocks[-1], lambda: visual(images), pre=True)  # (B, 1+64, W)
    features = dense_features(tiny_vit.model, images, vit_mode="csa")
    torch.testing.assert_close(features, _features_by_hand(visual, tokens, "csa"), atol=1e-5, rtol=1e-4)
    wrong = {
        "k-k term dropped": {"terms": ("q",)},
        "q-q term dropped": {"terms": ("k",)},
        "softmaxes averaged": {"combine": 0.5},
        "residual and MLP dropped": {"residual": False},
    }
    for what, variant in wrong.items():
        other = _features_by_hand(visual, tokens, "csa", **variant)
        assert (features - other).abs().max() > 1e-2, what


def test_vit_positional_embedding_interpolated_for_other_sizes(tiny_vit: mvpseg.ClipBundle) -> None:
    features = dense_features(tiny_vit.model, torch.randn(1, 3, 96, 40))
    assert features.shape == (1, 32, 12, 5)
    assert feature_stride(tiny_vit.model.visual) == 8
    # Interpolating an 8x8 grid of positions to 8x8 must give the original embedding back.
    from mvpseg.positions import resized_positions

    torch.testing.assert_close(resized_positions(tiny_vit.model.visual, (8, 8)),
                               tiny_vit.model.visual.positional_embedding)


def test_features_carry_no_gradient(tiny_clip: mvpseg.ClipBundle) -> None:
    images = torch.randn(1, 3, 64, 64, requires_grad=True)
    assert not dense_features(tiny_clip.model, images).requires_grad


def test_bad_inputs_are_named(tiny_vit: mvpseg.ClipBundle) -> None:
    with pytest.raises(ValueError, match="vit_mode"):
        dense_features(tiny_vit.model, torch.randn(1, 3, 64, 64), vit_mode="nope")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        dense_features(tiny_vit.model, torch.randn(3, 64, 64))
    with pytest.raises(TypeError, match="ModifiedResNet or VisionTransformer"):
        dense_features(torch.nn.Linear(2, 2), torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize("name, grid", [("RN50", (7, 10)), ("ViT-B-16", (14, 20))])
def test_real_architecture_sizes(name: str, grid: tuple[int, int]) -> None:
    clip = mvpseg.load_clip(name, pretrained=None)
    features = dense_features(clip.model, torch.randn(1, 3, 224, 320))
    embed_dim = clip.model.text_projection.shape[1]
    assert features.shape == (1, embed_dim, *grid)
    assert embed_dim == {"RN50": 1024, "ViT-B-16": 512}[name]


def test_every_vit_mode_is_one_row_of_the_mode_table() -> None:
    """dense.MODE_SPECS: one row per mode of mvpseg.config.VIT_MODES, each naming a mixing the code has."""
    from mvpseg.dense import _ATTENTION, MODE_SPECS, VIT_MODES

    assert set(MODE_SPECS) == set(VIT_MODES)
    for mode, spec in MODE_SPECS.items():
        assert spec.attention in {*_ATTENTION, "block", "self-calibration"}, mode
    assert [m for m, s in MODE_SPECS.items() if s.residual] == ["vanilla", "maskclip", "csa"]  # the papers' code


def test_dense_options_none_is_the_defaults(tiny_vit: mvpseg.ClipBundle) -> None:
    from mvpseg.config import DenseOptions
    from mvpseg.dense import VIT_MODES

    images = torch.randn(2, 3, 40, 56, generator=torch.Generator().manual_seed(5))  # a 5 x 7 grid: positions resized
    for mode in VIT_MODES:
        plain = dense_features(tiny_vit.model, images, mode)
        assert torch.equal(dense_features(tiny_vit.model, images, mode, options=None), plain), mode
        assert torch.equal(dense_features(tiny_vit.model, images, mode, options=DenseOptions()), plain), mode
    authors = dense_features(tiny_vit.model, images, "maskclip", DenseOptions(position_resize="authors"))
    assert (authors - dense_features(tiny_vit.model, images, "maskclip")).abs().max() > 1e-4  # another resize


def test_models_take_dense_options_as_a_segmenter_passes_them(tiny_vit: mvpseg.ClipBundle,
                                                              tiny_rn: mvpseg.ClipBundle) -> None:
    # model.features(crops, tower=..., options=config.dense): the options reach the ViT's mode; ResNets,
    # students ignore them
    from mvpseg.build import build_student
    from mvpseg.config import DenseOptions, MVPSegConfig, StudentConfig

    images = torch.randn(1, 3, 40, 56, generator=torch.Generator().manual_seed(6))
    options = DenseOptions(position_resize="authors", naclip_std=1.0, resclip_lambda=0.9, resclip_tau=1.0)
    model = mvpseg.build_mvpseg(tiny_vit, MVPSegConfig(num_prompts=2, vit_mode="resclip"))
    tower = model.inference_tower()
    with torch.no_grad():
        given = model.features(images, tower=tower, options=options)
        default = model.features(images, tower=tower)
    torch.testing.assert_close(given, F.normalize(dense_features(tiny_vit.model, images, "resclip", options), dim=1))
    torch.testing.assert_close(default, F.normalize(dense_features(tiny_vit.model, images, "resclip"), dim=1))
    assert (given - default).abs().max() > 1e-3
    teacher = mvpseg.build_mvpseg(tiny_rn, MVPSegConfig(num_prompts=2, num_context=3))
    student = build_student(teacher, StudentConfig(arch="deeplabv2", head="mvpseg", backbone="clip", output_stride=8,
                                                   head_channels=16)).eval()
    with torch.no_grad():
        for resnet_model in (teacher, student):
            tower = resnet_model.inference_tower()
            assert torch.equal(resnet_model.features(images, tower=tower, options=options),
                               resnet_model.features(images, tower=tower))


def test_dense_options_refuse_what_no_mode_can_run() -> None:
    from mvpseg.config import DenseOptions, InferenceConfig

    for bad, match in [({"position_resize": "nearest"}, "position_resize"), ({"naclip_std": 0.0}, "naclip_std"),
                       ({"resclip_lambda": 1.5}, "resclip_lambda"), ({"resclip_tau": -1.0}, "resclip_tau"),
                       ({"sfr_tau": 0.0}, "sfr_tau must be positive"), ({"sfr_lambda": 1.2}, "sfr_lambda"),
                       ({"sfr_threshold": -0.1}, "sfr_threshold")]:
        with pytest.raises(ValueError, match=match):
            DenseOptions(**bad)
    # an InferenceConfig rebuilt from its JSON values keeps its dense options
    config = InferenceConfig(dense=DenseOptions(position_resize="authors", resclip_lambda=0.6))
    assert InferenceConfig(**{**config.__dict__, "dense": {"position_resize": "authors", "resclip_lambda": 0.6}}) == config
