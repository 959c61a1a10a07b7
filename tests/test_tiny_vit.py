"""The parts world's tiny ViT CLIP: started from a ResNet CLIP's text tower, loaded by name, its modes kept."""

from __future__ import annotations

import json
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


def test_prompts_keep_the_mode_they_were_learned_with(tiny_vit, tmp_path: Path) -> None:
    from mvpseg.build import from_pretrained
    from mvpseg.checkpoint import save_prompt_checkpoint
    from mvpseg.dense import dense_features

    model = mvpseg.build_mvpseg(tiny_vit, mvpseg.MVPSegConfig(num_prompts=2, vit_mode="naclip"))
    path = save_prompt_checkpoint(tmp_path / "naclip.safetensors", model)
    loaded = from_pretrained(prompts=path, pretrained=None)
    assert loaded.clip.name == "test-tiny-vit" and loaded.config.vit_mode == "naclip"
    images = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(loaded.features(images),
                               torch.nn.functional.normalize(dense_features(loaded.clip.model, images, "naclip"), dim=1))
    # a Segmenter built from the file segments with that mode; an explicit mode overrides it
    segmenter = mvpseg.Segmenter.from_pretrained(prompts=path, pretrained=None, device="cpu")
    assert segmenter.model.config.vit_mode == "naclip"
    assert from_pretrained(prompts=path, pretrained=None, vit_mode="qq").config.vit_mode == "qq"
    with pytest.raises(ValueError, match="vit_mode must be one of"):
        from_pretrained(prompts=path, pretrained=None, vit_mode="sclip")


def test_zero_training_default_is_scclip_on_vit_b16(monkeypatch: pytest.MonkeyPatch) -> None:
    import open_clip

    import mvpseg.build as build

    real = open_clip.create_model

    def create_model(name, pretrained=None, **kwargs):  # ViT-B-16 asked for, a tiny ViT given (no 150M weights)
        return real("test-tiny-vit" if name == "ViT-B-16" else name, pretrained=pretrained, **kwargs)

    monkeypatch.setattr(open_clip, "create_model", create_model)
    templates = build.from_pretrained(pretrained=None)  # no prompts, no CLIP named: the templates' default
    assert templates.clip.name == "ViT-B-16" and templates.config.vit_mode == "scclip" and templates.prompts is None
    named = build.from_pretrained(clip="test-tiny-vit", pretrained=None)
    assert named.clip.name == "test-tiny-vit" and named.config.vit_mode == "scclip"
    assert build.from_pretrained(clip="test-tiny-vit", pretrained=None, vit_mode="naclip").config.vit_mode == "naclip"


def test_segment_takes_a_vit_mode(tiny_vit, tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from mvpseg.cli import main

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    common = ["segment", str(tmp_path / "a.png"), "--classes", "cat,dog", "--clip", "test-tiny-vit",
              "--pretrained", "none", "--short-side", "64", "--quiet"]
    assert main([*common, "--vit-mode", "naclip", "--out", str(tmp_path / "naclip")]) == 0
    assert (tmp_path / "naclip" / "a.png").is_file()
    assert main([*common, "--onnx", str(tmp_path / "m.onnx"), "--vit-mode", "naclip", "--out", str(tmp_path / "x")]) == 2


def test_demo_runs_on_the_tiny_vit_in_a_chosen_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from mvpseg.checkpoint import read_prompt_checkpoint
    from mvpseg.cli import main

    torch.manual_seed(0)
    clip = mvpseg.load_clip("mvpseg-tiny-parts-vit", pretrained=None)
    assert clip.model.visual.conv1.kernel_size == (16, 16) and clip.image_size == 256  # a 16x16 grid
    weights = tmp_path / "random-vit.safetensors"
    save_file({k: v.contiguous() for k, v in clip.model.state_dict().items()}, weights)
    out = tmp_path / "demo"
    assert main(["demo", "--world", "parts", "--clip", "mvpseg-tiny-parts-vit", "--vit-mode", "naclip",
                 "--out", str(out), "--num-train", "6", "--num-val", "3", "--iters", "2", "--batch-size", "3",
                 "--seeds", "1", "--student-iters", "2", "--overlays", "0", "--no-views-rows",
                 "--clip-weights", str(weights), "--quiet"]) == 0
    # MVP-SEG+'s student stands on a ResNet CLIP's trunk: a ViT demo says so at the start and has no such row
    assert "no MVP-SEG+ row" in capsys.readouterr().err
    rows = {row["name"]: row for row in json.loads((out / "results.json").read_text())}
    assert {"templates", "mvp-seg", "gpr-off"} <= set(rows) and "mvp-seg+" not in rows
    assert json.loads((out / "run_info.json").read_text())["student_row"] is False
    assert rows["mvp-seg"]["views"]["js"] is not None  # part views on the 16x16 grid
    _, metadata = read_prompt_checkpoint(out / "runs" / "mvp-seg" / "seed-0" / "prompts.safetensors")
    assert metadata["config"]["vit_mode"] == "naclip" and metadata["clip"]["name"] == "mvpseg-tiny-parts-vit"


@pytest.mark.parametrize("name", ["mvpseg-tiny-parts-vit", "mvpseg-tiny-parts-hvit"])
def test_the_shipped_tiny_vits_load_by_name_offline(name: str) -> None:
    from mvpseg.dense import dense_features

    bundle = mvpseg.load_clip(name, pretrained="mvpseg")
    assert bundle.pretrained == "mvpseg" and bundle.image_size == 256
    assert (ASSETS / f"{name}.safetensors").stat().st_size < 15 * 2**20
    features = dense_features(bundle.model, torch.zeros(1, 3, 256, 256), vit_mode="scclip")
    assert features.shape == (1, 128, 16, 16) and torch.isfinite(features).all()


@pytest.mark.parametrize("name", ["mvpseg-tiny", "mvpseg-tiny-parts", "mvpseg-tiny-parts-vit", "mvpseg-tiny-parts-hvit"])
def test_every_shipped_tiny_clip_loads_by_its_name_alone(name: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """No --pretrained: the shipped weights, in Python and on the command line; a wrong tag lists 'mvpseg'."""
    import numpy as np
    from PIL import Image

    from mvpseg.cli import main

    shipped = mvpseg.load_clip(name, pretrained="mvpseg")
    assert mvpseg.load_clip(name, pretrained="auto").fingerprint == shipped.fingerprint
    assert mvpseg.Segmenter.from_pretrained(clip=name, device="cpu").clip.fingerprint == shipped.fingerprint
    photo = tmp_path / "a.png"
    Image.fromarray(np.zeros((64, 80, 3), dtype=np.uint8)).save(photo)
    assert main(["segment", str(photo), "--clip", name, "--classes", "owl,grass", "--short-side", "64",
                 "--mode", "whole", "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert json.loads((tmp_path / "out" / "a.json").read_text())["made_with"]["model"]["clip"] == shipped.fingerprint
    with pytest.raises(ValueError, match=r"known: mvpseg\)"):
        mvpseg.load_clip(name, pretrained="openai")


@pytest.mark.parametrize("name", ["mvpseg-tiny-parts-vit", "mvpseg-tiny-parts-hvit"])
def test_vanilla_mode_is_the_untouched_towers_projected_patch_tokens(name: str) -> None:
    """``vanilla``: open_clip's own forward (last block as trained) gives the same patch tokens, projected."""
    import copy

    from mvpseg.dense import dense_features

    bundle = mvpseg.load_clip(name, pretrained="mvpseg")
    images = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    visual = copy.deepcopy(bundle.model.visual)
    visual.output_tokens = True
    with torch.no_grad():
        _, tokens = visual(images)  # (B, h*w, W) after ln_post
    expected = (tokens @ visual.proj).transpose(1, 2).reshape(2, -1, 16, 16)  # (B, h*w, D) -> (B, D, h, w)
    features = dense_features(bundle.model, images, vit_mode="vanilla")
    torch.testing.assert_close(features, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(features, dense_features(bundle.model, images, vit_mode="maskclip"), atol=1e-3)


def test_pretraining_distils_a_teacher_pooled_and_dense(tiny_rn, tmp_path: Path) -> None:
    """--teacher: the pooled and dense distillation terms are logged and change the weights a step gives."""
    import csv

    from mvpseg.world.pretrain import PretrainConfig, pretrain

    teacher = tmp_path / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_rn.model.state_dict().items()}, teacher)
    common = dict(model="test-tiny-vit", world="parts", image_size=64, steps=2, batch_size=4, pool=8, warmup=1,
                  log_every=1, progress=False, threads=1, stuff_only_fraction=0.25)
    plain = pretrain(PretrainConfig(out=str(tmp_path / "plain"), **common))
    taught = pretrain(PretrainConfig(out=str(tmp_path / "taught"), teacher=str(teacher), teacher_model="test-tiny-rn",
                                     distill_weight=1.0, distill_dense_weight=1.0, **common))
    rows = list(csv.DictReader((tmp_path / "taught" / "pretrain_log.csv").open()))
    assert len(rows) == 2 and all(0 < float(r["distill"]) <= 2 and 0 < float(r["distill_dense"]) <= 2 for r in rows)
    assert all(float(r["distill"]) == 0 for r in csv.DictReader((tmp_path / "plain" / "pretrain_log.csv").open()))
    from safetensors.torch import load_file

    a, b = load_file(str(plain)), load_file(str(taught))
    assert not torch.equal(a["visual.proj"], b["visual.proj"])
