"""The mvpseg command line, end to end on images made here."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
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


# The first lines of SCLIP's configs/cls_voc21.txt, as they are: one class per line, synonyms after commas.
SCLIP_STYLE = ("sky, wall, tree, wood, grass, road, sea, river, mountain, sands, desk, bed, building, cloud\n"
               "aeroplane\nbicycle\n"
               "person, person in shirt, person in jeans, person in dress\n"
               "television monitor, tv monitor, monitor, television, screen")


@pytest.mark.parametrize("text, expected", [
    ("cat\n# a comment\ndog\n\ngrass\n", ["cat", "dog", "grass"]),  # every line one class
    ("cat, dog,grass  # one line: commas separate classes, as --classes\n", ["cat", "dog", "grass"]),
    ("tv monitor|television, cat\n", ["tv monitor", "cat"]),  # one line: | separates synonyms
    ("cat\n# a comment\ndog, puppy\n\n", ["cat", "dog"]),  # several lines: commas separate synonyms
    (SCLIP_STYLE, ["sky", "aeroplane", "bicycle", "person", "television monitor"]),
])
def test_classes_file(weights: Path, tmp_path: Path, text: str, expected: list[str]) -> None:
    names = tmp_path / "names.txt"
    names.write_text(text)
    image = _photo(tmp_path / "a.png")
    assert main(["segment", str(image), "--classes-file", str(names), *_common(weights, tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "a.json").read_text())["class_names"] == expected


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
    # The very prompts of that file: the same labels and scores as a Segmenter built from it, and not
    # those of other prompts for the same CLIP.
    config = mvpseg.InferenceConfig(short_side=64, crop_size=64, stride=32)
    written = json.loads((out / "a.json").read_text())["presence"]
    labels = np.asarray(Image.open(out / "a.png"))
    other = save_prompt_checkpoint(tmp_path / "other.safetensors", mvpseg.build_mvpseg(
        tiny_rn, mvpseg.MVPSegConfig(num_context=2), generator=torch.Generator().manual_seed(1)))
    for path, same in ((checkpoint, True), (other, False)):
        segmenter = mvpseg.Segmenter.from_pretrained(clip="test-tiny-rn", pretrained=str(weights), prompts=path,
                                                     config=config)
        prediction = segmenter.predict(image, ["cat", "dog"])
        presence = [written["cat"], written["dog"]]
        if same:
            np.testing.assert_array_equal(labels, prediction.labels)
            np.testing.assert_allclose(presence, prediction.presence, rtol=1e-5, atol=1e-6)
        else:
            assert np.abs(np.asarray(presence) - prediction.presence).max() > 1e-3


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


def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height RGB pixels, with no pixel data: Pillow reads the size from it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b""))
                     + chunk(b"IEND", b""))
    return path


def test_decompression_bomb_is_one_line_and_the_rest_processed(weights: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    bomb = _png_header(tmp_path / "bomb.png", 20000, 20000)  # 400 million pixels: over Pillow's guard
    good = _photo(tmp_path / "good.png")
    out = tmp_path / "out"
    limit = Image.MAX_IMAGE_PIXELS
    status = main(["segment", str(bomb), str(good), "--classes", "cat,dog", *_common(weights, out)])
    assert status == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and "bomb.png" in errors[0] and "--max-pixels" in errors[0]
    assert sorted(p.name for p in out.iterdir()) == ["good.json", "good.png", "good_overlay.png"]
    assert Image.MAX_IMAGE_PIXELS == limit  # Pillow's process-wide guard is left alone


def test_max_pixels_limits_and_allows(weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    big = _photo(tmp_path / "big.png", (70, 90))  # 6,300 pixels
    small = _photo(tmp_path / "small.png", (40, 64))  # 2,560 pixels
    limit = Image.MAX_IMAGE_PIXELS
    out = tmp_path / "out"
    status = main(["segment", str(big), str(small), "--classes", "cat,dog", "--max-pixels", "6299",
                   *_common(weights, out)])
    assert status == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and "big.png: 90x70 = 6300 pixels, more than the limit of 6299" in errors[0]
    assert sorted(p.name for p in out.iterdir()) == ["small.json", "small.png", "small_overlay.png"]
    assert main(["segment", str(big), "--classes", "cat,dog", "--max-pixels", "6300",
                 *_common(weights, tmp_path / "allowed")]) == 0
    assert Image.open(tmp_path / "allowed" / "big.png").size == (90, 70)
    assert Image.MAX_IMAGE_PIXELS == limit
    assert main(["segment", str(big), "--classes", "cat", "--max-pixels", "0", *_common(weights, out)]) == 2


def test_load_image_max_pixels_leaves_pillow_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mvpseg.image import ImageReadError, load_image

    image = _photo(tmp_path / "a.png", (70, 90))
    expected = np.asarray(Image.open(image).convert("RGB"))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # a host program's own, stricter guard
    with pytest.raises(ImageReadError, match="too many pixels"):
        load_image(image)
    # An explicit limit is this call's alone: it reads the image without touching Pillow's setting.
    np.testing.assert_array_equal(load_image(image, max_pixels=6300), expected)
    assert Image.MAX_IMAGE_PIXELS == 1000
    with pytest.raises(ImageReadError, match="6300 pixels, more than the limit of 6299"):
        load_image(image, max_pixels=6299)


def test_classes_and_classes_file_together_give_both(weights: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog, puppy\n")
    image = _photo(tmp_path / "a.png")
    argv = ["segment", str(image), "--classes-file", str(names), *_common(weights, tmp_path / "out")]
    assert main([*argv, "--classes", "grass|lawn, sky"]) == 0
    assert json.loads((tmp_path / "out" / "a.json").read_text())["class_names"] == ["cat", "dog", "grass", "sky"]
    capsys.readouterr()
    assert main([*argv, "--classes", "sky, cat", "--out", str(tmp_path / "twice")]) == 2  # a class in both
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "duplicate class names: cat" in error
    assert not (tmp_path / "twice").exists()
