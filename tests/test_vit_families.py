"""The open_clip ViT architectures other CLIP families are released as (OpenAI, LAION, DataComp, DFN, MetaCLIP:
ViT-B/16, ViT-B/32, ViT-L/14, ViT-L/14@336, QuickGELU or GELU, DataComp's CLIPA towers without ln_pre): every
dense mode runs on each with random weights and gives (B, D, h, w); timm towers (SigLIP's) are refused in one line."""

from __future__ import annotations

import open_clip
import pytest
import torch
from open_clip.model import _build_vision_tower

from mvpseg.dense import VIT_MODES, dense_features, feature_stride, layer_choices

# architecture name -> the families whose tags load it (open_clip.list_pretrained())
FAMILIES = {
    "ViT-B-16": "OpenAI, LAION laion2b_s34b_b88k, DataComp datacomp_xl_s13b_b90k, DFN dfn2b",
    "ViT-B-16-quickgelu": "MetaCLIP metaclip_fullcc / metaclip_400m, DFN dfn2b",
    "ViT-B-32": "OpenAI, LAION, DataComp (a 7 x 7 grid at 224 px)",
    "ViT-L-14": "OpenAI, LAION laion2b_s32b_b82k, DataComp datacomp_xl_s13b_b90k, MetaCLIP, DFN dfn2b",
    "ViT-L-14-quickgelu": "MetaCLIP metaclip_fullcc, DFN dfn2b",
    "ViT-L-14-336": "OpenAI's ViT-L/14@336px",
    "ViT-L-14-CLIPA": "DataComp datacomp1b (CLIPA: no ln_pre, average pooling)",
}


def random_tower(name: str) -> torch.nn.Module:
    """The named architecture's image tower with cheap random weights: built without initialisation, then
    filled (LayerNorms as identity, biases zero, the rest uniform): a second for ViT-L instead of five."""
    config = open_clip.get_model_config(name)
    with torch.device("meta"):
        visual = _build_vision_tower(config["embed_dim"], config["vision_cfg"], quick_gelu=config.get("quick_gelu", False))
    visual = visual.to_empty(device="cpu").eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in visual.modules():
            for parameter_name, parameter in module.named_parameters(recurse=False):
                if isinstance(module, torch.nn.LayerNorm):
                    parameter.fill_(1.0 if parameter_name == "weight" else 0.0)
                elif parameter_name == "bias":
                    parameter.zero_()
                else:
                    parameter.uniform_(-0.05, 0.05, generator=generator)
    return visual


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_mode_runs_on_each_familys_architecture(name: str) -> None:
    visual = random_tower(name)
    stride, config = feature_stride(visual), open_clip.get_model_config(name)
    depth = len(visual.transformer.resblocks)
    assert depth == config["vision_cfg"]["layers"]
    # 24-block towers take the authors' ViT-L settings, 12-block ones ViT-B's (docs/method.md)
    assert "no published setting" not in layer_choices(depth - 1).source
    images = torch.randn(2, 3, 3 * stride, 2 * stride, generator=torch.Generator().manual_seed(1))  # a 3 x 2 grid
    for mode in VIT_MODES:
        features = dense_features(visual, images, vit_mode=mode)
        assert features.shape == (2, config["embed_dim"], 3, 2), (name, mode)
        assert torch.isfinite(features).all(), (name, mode)


def test_vit_b32_gives_a_7_by_7_grid_at_224() -> None:
    visual = random_tower("ViT-B-32")
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    for mode in ("maskclip", "naclip", "scclip"):
        assert dense_features(visual, images, vit_mode=mode).shape == (1, 512, 7, 7)


def test_timm_towers_are_refused_in_one_line() -> None:
    from open_clip.timm_model import TimmModel

    tower = TimmModel("vit_tiny_patch16_224", embed_dim=32, pretrained=False)  # how SigLIP's towers are built
    with pytest.raises(TypeError, match=r"^dense features need an open_clip ModifiedResNet or VisionTransformer image "
                                        r"tower, not TimmModel \(timm towers are not supported\)$"):
        dense_features(tower, torch.randn(1, 3, 32, 32))
