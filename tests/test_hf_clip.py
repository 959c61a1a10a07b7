"""transformers-format CLIP checkpoints (a CLIPModel folder written by save_pretrained, or a Hub id) load as the
open_clip CLIP mvpseg runs: the same image and text embeddings as transformers' own model, without importing it."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from test_hub import lay_out_cache

import mvpseg
from mvpseg.checkpoint import read_prompt_checkpoint, save_prompt_checkpoint
from mvpseg.cli import main
from mvpseg.clip import ClipWeightsUnavailable, load_clip

# transformers' CLIPModel at ViT-B/16 sizes (its defaults are ViT-B/32's but for the patch), OpenAI's QuickGELU
VIT_B16 = {"projection_dim": 512, "vision_config": {"patch_size": 16, "hidden_act": "quick_gelu"},
           "text_config": {"hidden_act": "quick_gelu"}}
# the sizes of conftest's registered "test-tiny-vit", so the folder has an open_clip name
TINY = {"projection_dim": 32,
        "vision_config": {"hidden_size": 32, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
                          "image_size": 64, "patch_size": 8},
        "text_config": {"hidden_size": 32, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2}}
PROMPTS = ["a photo of a cat.", "grass", "a bright red fire truck parked next to a house"]


def save_clip(folder: Path, config: dict, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    transformers = pytest.importorskip("transformers")  # imported here: 13 s, only for these tests
    transformers.CLIPModel(transformers.CLIPConfig(**config)).eval().save_pretrained(folder)
    return folder


def with_activation(folder: Path, target: Path, activation: str) -> Path:
    """The same weights (a hard link) under a config.json with another activation in both towers."""
    target.mkdir()
    config = json.loads((folder / "config.json").read_text())
    for tower in ("text_config", "vision_config"):
        config[tower]["hidden_act"] = activation
    (target / "config.json").write_text(json.dumps(config))
    os.link(folder / "model.safetensors", target / "model.safetensors")
    return target


def features(output: torch.Tensor | object) -> torch.Tensor:
    """transformers 4 returns the projected features, 5 an output whose pooler_output holds them."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def b16_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf-b16")
    quick = save_clip(root / "quick_gelu", VIT_B16)
    return {"quick_gelu": quick, "gelu": with_activation(quick, root / "gelu", "gelu")}  # gelu: as LAION's


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory, tiny_configs: Path) -> Path:
    return save_clip(tmp_path_factory.mktemp("hf") / "tiny-clip", TINY, seed=3)


@pytest.mark.parametrize("activation", ["quick_gelu", "gelu"])
def test_embeddings_equal_transformers_own(b16_folders: dict[str, Path], activation: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    folder = b16_folders[activation]
    reference = pytest.importorskip("transformers").CLIPModel.from_pretrained(folder).eval()
    monkeypatch.setitem(sys.modules, "transformers", None)  # loading must not import transformers
    clip = load_clip("ViT-B-16", folder)
    assert clip.name == "ViT-B-16" and clip.pretrained == str(folder) and clip.image_size == 224
    assert clip.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))  # OpenAI's, no preprocessor_config.json
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    tokens = clip.tokenizer(PROMPTS)  # (3, 77) CLIP BPE ids
    with torch.no_grad():
        expected_images = features(reference.get_image_features(pixel_values=images))
        expected_texts = features(reference.get_text_features(input_ids=tokens))
        ours_images, ours_texts = clip.model.encode_image(images), clip.model.encode_text(tokens)
    for ours, expected in ((ours_images, expected_images), (ours_texts, expected_texts)):
        assert ours.shape == expected.shape == (len(ours), 512)
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
        assert F.cosine_similarity(ours, expected).min() >= 0.99999
    # the activation is read from config.json: the other one gives measurably other embeddings
    other = "gelu" if activation == "quick_gelu" else "quick_gelu"
    with torch.no_grad():
        others = load_clip("ViT-B-16", b16_folders[other]).model.encode_image(images)
    assert (others - expected_images).abs().max() > 1e-3


def test_segment_runs_on_a_transformers_folder(tiny_folder: Path, tmp_path: Path) -> None:
    photo = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)).save(photo)
    out = tmp_path / "out"
    status = main(["segment", str(photo), "--classes", "cat,grass", "--clip-weights", str(tiny_folder),
                   "--out", str(out), "--short-side", "64", "--quiet"])  # no --clip: the folder has the architecture
    assert status == 0 and (out / "a.png").is_file()
    summary = json.loads((out / "a.json").read_text())
    assert summary["class_names"] == ["cat", "grass"]
    assert summary["made_with"]["model"]["clip"] == load_clip("ViT-B-16", tiny_folder).fingerprint


def test_the_folder_decides_the_architecture_and_its_fingerprint_is_the_weights(tiny_folder: Path,
                                                                                 tmp_path: Path) -> None:
    clip = load_clip("ViT-B-16", tiny_folder)  # the name given does not fit: the folder's architecture wins
    assert clip.name == "test-tiny-vit" and clip.image_size == 64
    assert mvpseg.dense_features(clip.model, torch.randn(1, 3, 64, 64), "scclip").shape == (1, 32, 8, 8)
    # the same tensors as an open_clip file of that architecture: the same fingerprint
    open_clip_file = tmp_path / "tiny.safetensors"
    save_file({name: tensor.contiguous() for name, tensor in clip.model.state_dict().items()}, open_clip_file)
    assert load_clip("test-tiny-vit", open_clip_file).fingerprint == clip.fingerprint
    assert load_clip("test-tiny-vit", tiny_folder / "model.safetensors").fingerprint == clip.fingerprint  # its file
    # a prompt checkpoint records it as any weights: the fingerprint, and the folder by its name
    checkpoint = save_prompt_checkpoint(tmp_path / "p.safetensors", mvpseg.build_mvpseg(clip, mvpseg.MVPSegConfig()))
    recorded = read_prompt_checkpoint(checkpoint)[1]["clip"]
    assert recorded["fingerprint"] == clip.fingerprint and recorded["name"] == "test-tiny-vit"
    assert recorded["pretrained"] == "tiny-clip/"
    with pytest.raises(ClipWeightsUnavailable, match="'tiny-clip/': pass that file with --clip-weights"):
        mvpseg.Segmenter.from_pretrained(prompts=checkpoint)


def test_a_hub_id_loads_from_the_cache_and_checkpoints_find_it_again(tiny_folder: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "hub"
    lay_out_cache(cache, "org/tiny-clip", tiny_folder)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    clip = load_clip("test-tiny-vit", "org/tiny-clip")
    assert clip.pretrained == "hf-hub:org/tiny-clip" and clip.name == "test-tiny-vit"
    assert clip.fingerprint == load_clip("test-tiny-vit", tiny_folder).fingerprint
    checkpoint = save_prompt_checkpoint(tmp_path / "p.safetensors", mvpseg.build_mvpseg(clip, mvpseg.MVPSegConfig()))
    assert read_prompt_checkpoint(checkpoint)[1]["clip"]["pretrained"] == "hf-hub:org/tiny-clip"
    assert mvpseg.Segmenter.from_pretrained(prompts=checkpoint).clip.fingerprint == clip.fingerprint
    with pytest.raises(ClipWeightsUnavailable) as missing:
        load_clip("ViT-B-16", "org/other-clip")
    message = str(missing.value)
    assert len(message.splitlines()) == 1 and "org/other-clip is not in the Hugging Face cache" in message
    assert "hf download org/other-clip config.json preprocessor_config.json model.safetensors" in message


def test_other_model_types_are_one_line_naming_what_was_found(tmp_path: Path, tiny_folder: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    siglip = tmp_path / "siglip"
    pytest.importorskip("transformers").SiglipConfig().save_pretrained(siglip)
    with pytest.raises(ClipWeightsUnavailable, match=r"holds a transformers 'siglip' model \(.*\), not a CLIP"):
        load_clip("ViT-B-16", siglip)
    status = main(["segment", str(tmp_path / "x.png"), "--classes", "cat", "--clip-weights", str(siglip),
                   "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(error) == 1 and "'siglip'" in error[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ClipWeightsUnavailable, match="has no config.json, so it is no transformers CLIP folder"):
        load_clip("ViT-B-16", empty)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((tiny_folder / "config.json").read_text())
    weights = load_file(tiny_folder / "model.safetensors")
    save_file({**weights, "vision_model.head.weight": torch.zeros(2)}, broken / "model.safetensors")
    with pytest.raises(ClipWeightsUnavailable, match="'vision_model.head.weight' is not part of a transformers CLIPModel"):
        load_clip("ViT-B-16", broken)
    config = json.loads((tiny_folder / "config.json").read_text())
    config["vision_config"]["num_hidden_layers"] = 3  # the weights have 2
    (broken / "config.json").write_text(json.dumps(config))
    save_file(weights, broken / "model.safetensors")
    with pytest.raises(ClipWeightsUnavailable, match="its weights do not fit its config.json"):
        load_clip("ViT-B-16", broken)
    config["vision_config"].update(num_hidden_layers=2, hidden_act="gelu_pytorch_tanh")
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(ClipWeightsUnavailable, match="the activation 'gelu_pytorch_tanh'"):
        load_clip("ViT-B-16", broken)
