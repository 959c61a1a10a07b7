"""The peers' protocols as the Segmenter runs them (``--protocol``), against an independent reference of their
evaluation (tests/protocol_reference.py), at the sizes their benchmarks have: a VOC-sized image, one narrower than
a window once resized, a Cityscapes frame."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import mvpseg
from mvpseg.build import build_mvpseg
from mvpseg.cli import main
from mvpseg.data.class_files import class_names_path
from mvpseg.inference import Segmenter
from mvpseg.protocols import get_protocol
from mvpseg.scoring import class_probabilities
from mvpseg.vocabulary import Vocabulary, read_classes_file
from tests.fakedata import write_voc
from tests.protocol_reference import PeerSettings, class_lines, peer_segment


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth random photo: regions the classes can tell apart, edges for PAMR to follow."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, max(height // 40, 2), max(width // 40, 2), generator=generator)
    smooth = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    return (smooth + 0.04 * torch.rand(1, 3, height, width, generator=generator)).clamp(0, 1).mul(255).round().byte()[
        0].permute(1, 2, 0).numpy()


@pytest.fixture(scope="module")
def peaked_vit(tiny_vit: mvpseg.ClipBundle) -> mvpseg.ClipBundle:
    """The tiny ViT (patch 8, its positions made for 64 px: every 224-px window resizes them) with peaked attention."""
    clip = mvpseg.load_clip("test-tiny-vit", pretrained=None)
    clip.model.load_state_dict(tiny_vit.model.state_dict())
    with torch.no_grad():
        for block in clip.model.visual.transformer.resblocks:
            width = block.attn.in_proj_weight.shape[1]
            block.attn.in_proj_weight[: 2 * width] *= 4.0
        clip.model.visual.positional_embedding.mul_(8.0)  # positions that matter
    return clip


def _settings(protocol: mvpseg.protocols.Protocol) -> PeerSettings:
    values = protocol.inference
    return PeerSettings(short_side=values["short_side"], crop=values["crop_size"] if values["mode"] == "slide" else 0,
                        stride=values["stride"], logit_scale=values["logit_scale"], prob_thd=values["prob_thd"],
                        area_thd=values["area_thd"] or None, pamr_steps=values["pamr_steps"],
                        cap=values["resize_cap"], pad=values.get("partial_patches") == "pad")


def _both(clip: mvpseg.ClipBundle, protocol: mvpseg.protocols.Protocol, image: np.ndarray,
          **changes: object) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(mvpseg's labels, probabilities, the reference's labels, probabilities) of one image under a protocol."""
    model = build_mvpseg(clip, vit_mode=protocol.vit_mode)  # the template classifier
    config = protocol.inference_config(**changes)
    segmenter = Segmenter(model, config=config, device="cpu")
    path = class_names_path(protocol.class_file)
    vocabulary = Vocabulary.of(read_classes_file(path), warn=False)
    probabilities = segmenter.probabilities(image, vocabulary)
    labels = segmenter.labels(probabilities.clone()).numpy()
    settings = dataclasses.replace(_settings(protocol), **{
        {"crop_size": "crop", "prob_thd": "prob_thd", "logit_scale": "logit_scale", "short_side": "short_side",
         "stride": "stride", "pamr_steps": "pamr_steps"}[key]: value for key, value in changes.items()
        if key != "templates"})
    reference_labels, reference_probabilities = peer_segment(model, class_lines(path), image, settings, config.dense)
    return labels, probabilities.numpy(), reference_labels, reference_probabilities


CASES = [  # (protocol, benchmark, image sizes): background words and area_thd; logit 55 with prob_thd 0.35;
    # the whole image with PAMR; 560 px with many windows and PAMR; ClearCLIP's 448-px windows and "background"
    ("sclip", "voc21", [(375, 500), (60, 600)]),
    ("scclip", "coco-object", [(375, 500)]),
    ("naclip", "voc21", [(375, 500), (60, 600)]),
    ("naclip", "cityscapes", [(1024, 2048)]),
    ("clearclip", "voc21", [(375, 500), (60, 600)]),
]


@pytest.mark.parametrize("name, bench, sizes", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_peer_protocols_equal_the_reference(peaked_vit: mvpseg.ClipBundle, name: str, bench: str,
                                            sizes: list[tuple[int, int]]) -> None:
    protocol = get_protocol(name, bench)
    for height, width in sizes:
        labels, probabilities, reference_labels, reference_probabilities = _both(
            peaked_vit, protocol, _image(height, width))
        assert labels.shape == (height, width)
        assert np.abs(probabilities - reference_probabilities).max() < 1e-4
        assert (labels == reference_labels).mean() >= 0.999
        assert len(np.unique(labels)) > 1  # not a trivial picture


@pytest.mark.parametrize("change", [{"logit_scale": 90.0}, {"prob_thd": 0.3}, {"short_side": 280}, {"stride": 56},
                                    {"templates": "maskclip-85"}, {"pamr_steps": 3}], ids=lambda c: next(iter(c)))
def test_a_changed_setting_changes_the_labels(peaked_vit: mvpseg.ClipBundle, change: dict[str, object]) -> None:
    protocol = get_protocol("sclip", "voc21")
    image = _image(375, 500, seed=1)
    labels, _, reference_labels, _ = _both(peaked_vit, protocol, image)
    changed, _, reference_changed, _ = _both(peaked_vit, protocol, image, **change)
    assert (changed != labels).mean() > 0.001  # the setting is read
    if "templates" not in change:  # and read as the reference reads it
        assert (changed == reference_changed).mean() >= 0.999


def test_vit_b16_at_voc_size_equals_the_reference(vit_b16_clip: mvpseg.ClipBundle) -> None:
    """A ViT-B/16 image tower (random, attention peaked) under SCLIP's VOC21 protocol on a VOC-sized photo."""
    labels, probabilities, reference_labels, reference_probabilities = _both(
        vit_b16_clip, get_protocol("sclip", "voc21"), _image(375, 500, seed=2))
    assert np.abs(probabilities - reference_probabilities).max() < 1e-4
    assert (labels == reference_labels).mean() >= 0.999


@pytest.fixture(scope="module")
def vit_b16_clip(tiny_configs: Path) -> mvpseg.ClipBundle:
    """OpenAI's ViT-B/16 image tower with the tiny text tower (registered here), attention peaked."""
    folder = tiny_configs / "b16"
    folder.mkdir(exist_ok=True)
    (folder / "test-vit-b16-text32.json").write_text(json.dumps({
        "embed_dim": 32, "quick_gelu": True,
        "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}))
    import open_clip

    open_clip.add_model_config(folder)
    torch.manual_seed(0)
    clip = mvpseg.load_clip("test-vit-b16-text32", pretrained=None)
    with torch.no_grad():
        for block in clip.model.visual.transformer.resblocks:
            width = block.attn.in_proj_weight.shape[1]
            block.attn.in_proj_weight[: 2 * width] *= 3.0
    return clip


# --- the pieces -----------------------------------------------------------------------------------------------


def test_mmcv_rescale_sizes(tiny_vit: mvpseg.ClipBundle) -> None:
    import cv2

    model = build_mvpseg(tiny_vit, vit_mode="maskclip")
    mean, std = model.normalisation("cpu")
    image = _image(375, 500)
    levels = {}
    for resize_filter in ("cv2", "bilinear", "antialias"):
        segmenter = Segmenter(model, device="cpu", config=mvpseg.InferenceConfig(
            short_side=336, resize_cap=2048, resize_filter=resize_filter))  # type: ignore[arg-type]
        for (height, width), expected in [((375, 500), (336, 448)), ((1024, 2048), (336, 672)),
                                          ((60, 600), (205, 2048)), ((336, 448), (336, 448))]:
            assert tuple(segmenter.resize(np.zeros((height, width, 3), np.uint8)).shape[-2:]) == expected
        levels[resize_filter] = ((segmenter.resize(image) * std + mean) * 255.0)[0].permute(1, 2, 0)
    assert torch.equal(levels["cv2"].round(), torch.from_numpy(cv2.resize(image, (448, 336))).float())
    assert torch.allclose(levels["cv2"], levels["cv2"].round(), atol=1e-3)  # 8-bit levels, as cv2 leaves them
    assert torch.allclose(levels["bilinear"], levels["bilinear"].round(), atol=1e-3)
    assert (levels["bilinear"] - levels["cv2"]).abs().max() < 1.01  # within one level of OpenCV's
    assert (levels["antialias"] - levels["cv2"]).abs().max() > 1.5


def test_softmax_over_every_query_counts_a_shared_name_once_per_class() -> None:
    vocabulary = Vocabulary.of([("sky", "cloud"), ("tree", "sky"), ("road",)], warn=False)
    logits = torch.randn(len(vocabulary.names), 5, 7)  # names: sky, cloud, tree, road
    queries = torch.stack([logits[0], logits[1], logits[2], logits[0], logits[3]])  # the peers' list, sky twice
    probabilities = queries.softmax(dim=0)
    expected = torch.stack([probabilities[0:2].amax(0), probabilities[2:4].amax(0), probabilities[4]])
    assert torch.allclose(class_probabilities(logits, vocabulary, "softmax-max"), expected, atol=1e-6)
    assert torch.allclose(class_probabilities(logits, vocabulary, "max-logit"),
                          torch.stack([logits[:2].amax(0), logits[[2, 0]].amax(0), logits[3]]).softmax(0), atol=1e-6)


def test_from_pretrained_takes_a_protocol(tiny_vit: mvpseg.ClipBundle, tmp_path: Path) -> None:
    segmenter = Segmenter.from_pretrained("test-tiny-vit", pretrained=None, device="cpu", protocol="naclip:voc21",
                                          overrides={"prob_thd": 0.2})
    assert segmenter.model.config.vit_mode == "naclip"
    config = segmenter.config
    assert (config.mode, config.short_side, config.pamr_steps, config.prob_thd) == ("whole", 336, 10, 0.2)
    assert config.dense.position_resize == "authors" and config.templates == "openai-imagenet-80"
    with pytest.raises(ValueError, match="no values for benchmark 'pc459'"):
        Segmenter.from_pretrained("test-tiny-vit", pretrained=None, device="cpu", protocol="sclip:pc459")


def test_the_resclip_protocol_runs_its_semantic_feedback(peaked_vit: mvpseg.ClipBundle) -> None:
    # ResCLIP's segmentor always runs SFR; the preset turns it on with each benchmark's settings, and it changes the
    # answer (tests/test_vit_modes.py holds its features to ResCLIP's code).
    protocol = get_protocol("resclip:cityscapes")
    assert protocol.inference["dense"]["resclip_sfr"] and protocol.inference["dense"]["sfr_threshold"] == 0.1
    config = protocol.inference_config(short_side=96, crop_size=48, stride=24, resize_filter="bilinear")
    vocabulary = Vocabulary.of(["road", "car", "sky", "tree"])
    image = _image(120, 240)
    with_sfr = Segmenter(build_mvpseg(peaked_vit, vit_mode="resclip"), config, device="cpu")
    without = Segmenter(with_sfr.model, dataclasses.replace(config, dense=dataclasses.replace(
        config.dense, resclip_sfr=False)), device="cpu")
    first, second = with_sfr.probabilities(image, vocabulary), without.probabilities(image, vocabulary)
    assert first.shape == (4, 120, 240) and torch.isfinite(first).all()
    assert (first - second).abs().max() > 1e-3
    prompts = build_mvpseg(peaked_vit, mvpseg.MVPSegConfig(num_prompts=2, num_context=4, vit_mode="resclip"))
    for model in (prompts, build_mvpseg(peaked_vit, vit_mode="naclip")):
        with pytest.raises(ValueError, match="resclip_sfr .* template classifier in the resclip mode only") as error:
            Segmenter(model, config, device="cpu")
        assert "\n" not in str(error.value)


# --- the command line -------------------------------------------------------------------------------------------


def test_eval_records_and_prints_the_protocol(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_voc(tmp_path / "voc", num_val=2, size=(60, 80))
    out = tmp_path / "out"
    status = main(["eval", "--dataset", "voc21", "--data-root", str(tmp_path / "voc"), "--clip", "test-tiny-vit",
                   "--pretrained", "none", "--protocol", "sclip", "--short-side", "64", "--out", str(out), "--quiet"])
    assert status == 0
    setup = json.loads((out / "metrics.json").read_text())["setup"]
    assert setup["protocol"]["name"] == "sclip" and setup["protocol"]["benchmark"] == "voc21"
    assert setup["vit_mode"] == "csa" and setup["inference"]["logit_scale"] == 65.0
    assert setup["inference"]["short_side"] == 64  # a flag over the protocol
    assert setup["protocol"]["class_file"] == "cls_voc21.txt"
    assert "sky" in setup["prompt_names"]["background"]  # the background words
    printed = capsys.readouterr().out
    assert "protocol sclip (voc21): short side 64 (cap 2048), windows 224/112 stitched on pixels" in printed


@pytest.mark.parametrize("flags, message", [
    (["--protocol", "nope"], "--protocol: unknown protocol 'nope'"),
    (["--protocol", "sclip", "--dataset-override"], None),
    (["--pamr", "-1"], "pamr_steps must be 0 (off) or a positive number of steps"),
])
def test_bad_protocol_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str],
                                        message: str | None) -> None:
    write_voc(tmp_path / "voc", num_val=1)
    dataset = "voc21"
    if "--dataset-override" in flags:  # a protocol on a benchmark it has no values for
        flags, dataset, message = ["--protocol", "sclip"], "custom", "--protocol: protocol 'sclip' has no values for"
        (tmp_path / "voc" / "VOCdevkit" / "VOC2012" / "class_names.txt").write_text("a\nb\n")
    status = main(["eval", "--dataset", dataset, "--data-root", str(tmp_path / "voc"), "--clip", "test-tiny-vit",
                   "--pretrained", "none", "--out", str(tmp_path / "out"), "--quiet", *flags])
    error = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(error) == 1 and message in error[0]
