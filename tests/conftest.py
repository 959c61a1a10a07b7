"""Shared fixtures: tiny open_clip architectures registered by name, so every code path (load_clip, the
CLI) sees them exactly like a real CLIP. Random weights throughout: no pretrained CLIP exists offline."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch

import mvpseg

# The tiny models gain nothing from threads, and extra threads stall badly when the machine is busy.
torch.set_num_threads(1)

TINY_CONFIGS = {
    # A ModifiedResNet: layers [1,1,1,1], width 16 (stride 32), 4 attention-pool heads.
    "test-tiny-rn": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "patch_size": None},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    },
    # A ViT: patch 8, 2 blocks, width 32, 2 heads.
    "test-tiny-vit": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    },
}


@pytest.fixture(scope="session", autouse=True)
def tiny_configs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("configs")
    for name, config in TINY_CONFIGS.items():
        (folder / f"{name}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder)
    return folder


def make_clip(name: str, seed: int = 0) -> mvpseg.ClipBundle:
    torch.manual_seed(seed)
    return mvpseg.load_clip(name, pretrained=None)


@pytest.fixture(scope="session")
def tiny_rn(tiny_configs: Path) -> mvpseg.ClipBundle:
    return make_clip("test-tiny-rn")


@pytest.fixture(scope="session")
def tiny_vit(tiny_configs: Path) -> mvpseg.ClipBundle:
    return make_clip("test-tiny-vit")


@pytest.fixture(params=["test-tiny-rn", "test-tiny-vit"])
def tiny_clip(request: pytest.FixtureRequest, tiny_rn: mvpseg.ClipBundle,
              tiny_vit: mvpseg.ClipBundle) -> mvpseg.ClipBundle:
    return tiny_rn if request.param == "test-tiny-rn" else tiny_vit
