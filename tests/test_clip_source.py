"""A prompt checkpoint names the CLIP it was learned on, so ``--prompts CKPT`` alone finds it again."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_clip
from PIL import Image
from safetensors.torch import save_file

import mvpseg
from mvpseg.build import ClipWeightsWarning, from_pretrained
from mvpseg.checkpoint import read_prompt_checkpoint, save_prompt_checkpoint
from mvpseg.cli import main


def _photo(path: Path) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(path)
    return path


def test_prompts_learned_on_the_shipped_tiny_clip_need_no_clip_options(tmp_path: Path) -> None:
    tiny = mvpseg.load_clip("mvpseg-tiny", "mvpseg")
    model = mvpseg.build_mvpseg(tiny, mvpseg.MVPSegConfig(num_prompts=2, init_text="a photo of a"),
                                generator=torch.Generator().manual_seed(0))
    checkpoint = save_prompt_checkpoint(tmp_path / "world.safetensors", model)
    learned_on = read_prompt_checkpoint(checkpoint)[1]["clip"]
    assert learned_on["name"] == "mvpseg-tiny" and learned_on["pretrained"] == "mvpseg"
    assert learned_on["fingerprint"] == tiny.fingerprint
    out = tmp_path / "out"
    status = main(["segment", str(_photo(tmp_path / "a.png")), "--classes", "stripes,grass", "--prompts",
                   str(checkpoint), "--out", str(out), "--short-side", "128", "--quiet"])
    assert status == 0 and (out / "a.png").is_file()
    assert from_pretrained(prompts=checkpoint).clip.fingerprint == tiny.fingerprint


def test_prompts_on_other_weights_of_their_architecture_get_a_one_line_warning(
        tiny_rn: mvpseg.ClipBundle, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = mvpseg.build_mvpseg(tiny_rn, mvpseg.MVPSegConfig(num_context=2))
    checkpoint = save_prompt_checkpoint(tmp_path / "rn.safetensors", model)
    with pytest.warns(ClipWeightsWarning, match="rn.safetensors was learned on test-tiny-rn weights"):
        mvpseg.load_mvpseg(checkpoint, make_clip("test-tiny-rn", seed=1))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same weights: no warning
        mvpseg.load_mvpseg(checkpoint, tiny_rn)
    other = tmp_path / "other.safetensors"
    save_file(dict(make_clip("test-tiny-rn", seed=1).model.state_dict()), other)
    status = main(["segment", str(_photo(tmp_path / "a.png")), "--classes", "cat,dog", "--prompts", str(checkpoint),
                   "--clip-weights", str(other), "--out", str(tmp_path / "out"), "--short-side", "64", "--quiet"])
    assert status == 0
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("mvpseg: warning: rn.safetensors was learned on")


def test_prompts_learned_on_a_weights_file_ask_for_that_file(tiny_rn: mvpseg.ClipBundle, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    weights = tmp_path / "my-rn.safetensors"
    save_file(dict(tiny_rn.model.state_dict()), weights)
    clip = mvpseg.load_clip("test-tiny-rn", str(weights))
    assert clip.pretrained == str(weights)
    checkpoint = save_prompt_checkpoint(tmp_path / "p.safetensors", mvpseg.build_mvpseg(clip, mvpseg.MVPSegConfig()))
    assert read_prompt_checkpoint(checkpoint)[1]["clip"]["pretrained"] == "my-rn.safetensors"  # no local path
    status = main(["segment", str(_photo(tmp_path / "a.png")), "--classes", "cat", "--prompts", str(checkpoint),
                   "--out", str(tmp_path / "out")])
    assert status == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "'my-rn.safetensors'" in error and "--clip-weights PATH" in error
    status = main(["segment", str(_photo(tmp_path / "a.png")), "--classes", "cat", "--prompts", str(checkpoint),
                   "--clip-weights", str(weights), "--out", str(tmp_path / "out"), "--short-side", "64", "--quiet"])
    assert status == 0 and json.loads((tmp_path / "out" / "a.json").read_text())["class_names"] == ["cat"]
