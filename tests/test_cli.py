"""The mvpseg command line, end to end on images made here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import mvpseg
from mvpseg.checkpoint import save_prompt_checkpoint
from mvpseg.cli import build_parser, main


@pytest.fixture()
def weights(tiny_rn: mvpseg.ClipBundle, tmp_path: Path) -> Path:
    path = tmp_path / "tiny-rn.safetensors"
    save_file(dict(tiny_rn.model.state_dict()), path)
    return path


def _photo(path: Path, size: tuple[int, int] = (70, 90), mode: str = "RGB") -> Path:
    array = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(array).convert(mode).save(path)
    return path


def _common(weights: Path, out: Path) -> list[str]:
    return ["--clip", "test-tiny-rn", "--clip-weights", str(weights), "--out", str(out), "--short-side", "64",
            "--crop-size", "64", "--stride", "32", "--quiet"]


def test_segment_writes_labels_overlay_and_shares(weights: Path, tmp_path: Path) -> None:
    images = [_photo(tmp_path / "a.jpg"), _photo(tmp_path / "b.png", (40, 64), mode="RGBA")]
    out = tmp_path / "out"
    status = main(["segment", *map(str, images), "--classes", "cat, dog,grass", "--background", "background",
                   *_common(weights, out)])
    assert status == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "a.png", "a_overlay.png",
                                                      "b.json", "b.png", "b_overlay.png"]
    labels = Image.open(out / "a.png")
    assert labels.mode == "P" and labels.size == (90, 70)
    summary = json.loads((out / "a.json").read_text())
    assert summary["class_names"] == ["background", "cat", "dog", "grass"]
    assert sum(summary["pixel_share"].values()) == pytest.approx(1.0)
    counts = np.bincount(np.asarray(labels).ravel(), minlength=4) / labels.size[0] / labels.size[1]
    assert list(summary["pixel_share"].values()) == pytest.approx(counts.tolist())
    assert Image.open(out / "a_overlay.png").width > 90  # the legend strip


def test_bad_images_are_reported_and_the_rest_processed(weights: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    good = _photo(tmp_path / "good.png")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    out = tmp_path / "out"
    status = main(["segment", str(broken), str(tmp_path / "missing.png"), str(good), "--classes", "cat,dog",
                   *_common(weights, out)])
    assert status == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2
    assert "broken.jpg: not a readable image" in errors[0] and "missing.png: no such file" in errors[1]
    assert sorted(p.name for p in out.iterdir()) == ["good.json", "good.png", "good_overlay.png"]


@pytest.mark.parametrize("classes, message", [
    ("", "empty"),
    ("cat,,dog", "empty"),
    ("cat,dog,cat", "duplicate class names: cat"),
])
def test_bad_class_lists_exit_2_with_one_line(weights: Path, tmp_path: Path, classes: str, message: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    image = _photo(tmp_path / "a.png")
    assert main(["segment", str(image), "--classes", classes, *_common(weights, tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message in error


def test_classes_file(weights: Path, tmp_path: Path) -> None:
    names = tmp_path / "names.txt"
    names.write_text("cat\n# a comment\ndog, grass\n\n")
    image = _photo(tmp_path / "a.png")
    assert main(["segment", str(image), "--classes-file", str(names), *_common(weights, tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "a.json").read_text())["class_names"] == ["cat", "dog", "grass"]


def test_prompts_for_another_clip_are_refused(weights: Path, tiny_vit: mvpseg.ClipBundle, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    model = mvpseg.build_mvpseg(tiny_vit, mvpseg.MVPSegConfig(num_context=2))
    checkpoint = save_prompt_checkpoint(tmp_path / "vit.safetensors", model)
    image = _photo(tmp_path / "a.png")
    status = main(["segment", str(image), "--classes", "cat", "--prompts", str(checkpoint), *_common(weights, tmp_path / "o")])
    assert status == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "learned on CLIP 'test-tiny-vit'" in error


def test_prompts_checkpoint_is_used(weights: Path, tiny_rn: mvpseg.ClipBundle, tmp_path: Path) -> None:
    model = mvpseg.build_mvpseg(tiny_rn, mvpseg.MVPSegConfig(num_context=2),
                                generator=torch.Generator().manual_seed(0))
    checkpoint = save_prompt_checkpoint(tmp_path / "rn.safetensors", model)
    image = _photo(tmp_path / "a.png")
    out = tmp_path / "out"
    assert main(["segment", str(image), "--classes", "cat,dog", "--prompts", str(checkpoint), *_common(weights, out)]) == 0
    assert set(json.loads((out / "a.json").read_text())["presence"]) == {"cat", "dog"}  # GPR scores: prompts in use


def test_missing_clip_weights_file_is_one_paragraph(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = _photo(tmp_path / "a.png")
    status = main(["segment", str(image), "--classes", "cat", "--clip", "RN50", "--clip-weights",
                   str(tmp_path / "RN50.pt"), "--out", str(tmp_path / "o")])
    assert status == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "--clip-weights PATH" in error and "Traceback" not in error


def test_help_is_complete() -> None:
    text = build_parser().format_help()
    for command in ("segment", "eval", "prepare", "train"):
        assert command in text
    result = subprocess.run([sys.executable, "-m", "mvpseg", "segment", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for flag in ("--classes", "--classes-file", "--background", "--clip", "--pretrained", "--clip-weights",
                 "--prompts", "--out", "--mode", "--short-side"):
        assert flag in result.stdout
    train_help = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for flag in ("--dataset", "--data-root", "--iters", "--batch-size", "--lr", "--num-prompts", "--out", "--resume",
                 "--no-gpr", "--oc-weight", "--cls-weight", "--transductive", "--clip-weights"):
        assert flag in train_help
