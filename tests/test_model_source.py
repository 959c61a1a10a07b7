"""One model source (mvpseg.ModelSource) names the model for every entry point: the same labels from each."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import mvpseg
from mvpseg.cli import main
from mvpseg.cli.common import UsageError, add_model_flags, model_source
from mvpseg.config import ModelSource


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_model_flags(parser)
    return parser.parse_args(argv)


def test_flags_are_the_fields_and_give_the_source_typed() -> None:
    flags = ["--clip", "mvpseg-tiny-parts-vit", "--pretrained", "none", "--prompts", "org/name", "--vit-mode", "naclip"]
    assert model_source(_parse(*flags)) == ModelSource(clip="mvpseg-tiny-parts-vit", pretrained=None,
                                                       prompts="org/name", vit_mode="naclip")
    assert model_source(_parse()) == ModelSource()  # nothing typed: every default
    assert model_source(_parse("--pretrained", "laion", "--clip-weights", "w.pt")).pretrained == "w.pt"
    parser = argparse.ArgumentParser()
    add_model_flags(parser)
    every = {action.dest for action in parser._actions}
    for field in dataclasses.fields(ModelSource):  # a new field is a new flag, with its comment as help
        assert f"field:{field.name}" in every, field.name


@pytest.mark.parametrize("fields, message", [
    ({"prompts": "a", "student": "b"}, "not both"),
    ({"student": "b", "vit_mode": "naclip"}, "own network"),
    ({"onnx": "m.onnx", "vit_mode": "naclip"}, "exported with"),
    ({"vit_mode": "nope"}, "vit_mode must be one of"),
])
def test_bad_sources_are_one_line_everywhere(fields: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelSource(**fields)
    flags = [item for name, value in fields.items() for item in (f"--{name.replace('_', '-')}", value)]
    if "nope" not in flags:  # argparse refuses an unknown choice itself
        with pytest.raises(UsageError, match=message):
            model_source(_parse(*flags))


def test_every_entry_point_builds_the_same_model_from_one_source(tiny_vit: mvpseg.ClipBundle, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from mvpseg.cli.serve import load_segmenter as serve_segmenter
    from mvpseg.integrations.ray import SegmentBatch

    weights = tmp_path / "tiny-vit.safetensors"
    save_file(dict(tiny_vit.model.state_dict()), weights)
    photo = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (72, 96, 3), dtype=np.uint8)).save(photo)
    source = ModelSource(clip="test-tiny-vit", pretrained=str(weights), vit_mode="naclip")
    inference = {"short_side": 64, "mode": "whole"}
    classes = ["cat", "dog", "grass"]
    flags = ["--clip", "test-tiny-vit", "--clip-weights", str(weights), "--vit-mode", "naclip", "--short-side", "64",
             "--mode", "whole", "--device", "cpu"]

    python = mvpseg.Segmenter.from_source(source, device="cpu", overrides=inference)
    expected = python.predict(photo, classes).labels
    assert python.model.config.vit_mode == "naclip"
    other = mvpseg.Segmenter.from_source(dataclasses.replace(source, vit_mode="qq"), device="cpu", overrides=inference)
    assert (other.predict(photo, classes).labels != expected).any()  # the mode is part of the source
    legacy = mvpseg.Segmenter.from_pretrained(clip="test-tiny-vit", pretrained=str(weights), vit_mode="naclip",
                                              device="cpu", overrides=inference)
    np.testing.assert_array_equal(legacy.predict(photo, classes).labels, expected)

    assert main(["segment", str(photo), "--classes", ",".join(classes), "--out", str(tmp_path / "cli"), "--quiet",
                 *flags]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "cli" / "a.png")), expected)

    parser = argparse.ArgumentParser()
    from mvpseg.cli import serve

    serve.add_parser(parser.add_subparsers())
    served = serve_segmenter(parser.parse_args(["serve", *flags]))
    np.testing.assert_array_equal(served.predict(photo, classes).labels, expected)

    batch = SegmentBatch(classes, source=source, device="cpu", inference=inference)
    result = batch({"path": np.asarray([str(photo)])})
    np.testing.assert_array_equal(result["labels"][0], expected)
    assert SegmentBatch(classes, source=dataclasses.asdict(source), device="cpu",
                        inference=inference).source == source
    with pytest.raises(ValueError, match="not both"):
        SegmentBatch(classes, source=source, prompts="p.safetensors")
    with pytest.raises(ValueError, match="ONNX"):
        mvpseg.Segmenter.from_source(ModelSource(onnx="m.onnx"))
    torch.testing.assert_close(python.text_embeddings(classes), served.text_embeddings(classes))
