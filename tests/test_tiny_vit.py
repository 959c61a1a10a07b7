"""The parts world's tiny ViT CLIP: started from a ResNet CLIP's text tower, loaded by name, its modes kept."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import mvpseg
from mvpseg.world.pretrain import build_tiny_clip, initial_state

ASSETS = Path(mvpseg.__file__).parent / "world" / "assets"


def test_text_only_init_takes_the_text_tower_and_keeps_a_new_image_tower(tmp_path: Path) -> None:
    torch.manual_seed(0)
    resnet = build_tiny_clip(str(ASSETS / "mvpseg-tiny-parts.json"))
    path = tmp_path / "resnet.safetensors"
    save_file({k: v.contiguous() for k, v in resnet.state_dict().items()}, path)
    torch.manual_seed(1)
    vit = build_tiny_clip(str(ASSETS / "mvpseg-tiny-parts-vit.json"))
    own = {k: v.clone() for k, v in vit.state_dict().items()}
    with pytest.raises(ValueError, match="does not fit"):  # the whole CLIP cannot start a ViT
        initial_state(vit, path)
    state = initial_state(vit, path, towers="text")
    vit.load_state_dict(state, strict=True)
    text_keys = [k for k in own if not k.startswith("visual.")]
    assert "logit_scale" in text_keys and "token_embedding.weight" in text_keys
    for key in text_keys:
        assert torch.equal(state[key], resnet.state_dict()[key].float()), key
    for key in (k for k in own if k.startswith("visual.")):
        assert torch.equal(state[key], own[key]), key
    with pytest.raises(ValueError, match="init_towers"):
        initial_state(vit, path, towers="image")
