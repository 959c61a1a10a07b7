"""The evaluation protocols of the peers: every preset a valid InferenceConfig, the values that decide their
figures as their configs set them, class files that match the label spaces, OpenAI's 80 templates."""

from __future__ import annotations

import open_clip.zero_shot_metadata
import pytest

from mvpseg.config import InferenceConfig, check_vit_mode
from mvpseg.data.class_files import class_names_path
from mvpseg.data.classes import dataset_info
from mvpseg.prompts import TEMPLATES
from mvpseg.protocols import (
    BENCHMARKS,
    PROTOCOL_NAMES,
    TRAINING_FREE_BENCHMARKS,
    get_protocol,
    protocol_benchmarks,
)
from mvpseg.vocabulary import read_classes_file

PEERS = ("sclip", "clearclip", "naclip", "resclip", "scclip")
# (pytest-benchmark owns the fixture name "benchmark": the parameter is "bench")
PEER_BENCHMARKS = [(name, benchmark) for name in PEERS for benchmark in TRAINING_FREE_BENCHMARKS]

# The peers' prompts/imagenet_template.py ``openai_imagenet_template`` (the same 80 lambdas in all five
# repositories), each applied to "{}": a transcription, as the peers' file cannot be imported here.
PEER_TEMPLATES = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.",
    "a bad photo of the {}.", "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.",
    "a photo of a hard to see {}.", "a bright photo of a {}.", "a photo of a clean {}.",
    "a photo of a dirty {}.", "a dark photo of the {}.", "a drawing of a {}.", "a photo of my {}.",
    "the plastic {}.", "a photo of the cool {}.", "a close-up photo of a {}.",
    "a black and white photo of the {}.", "a painting of the {}.", "a painting of a {}.",
    "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.", "a blurry photo of the {}.", "a photo of the {}.",
    "a good photo of the {}.", "a rendering of the {}.", "a {} in a video game.", "a photo of one {}.",
    "a doodle of a {}.", "a close-up photo of the {}.", "a photo of a {}.", "the origami {}.",
    "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.", "a origami {}.",
    "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.", "a photo of the clean {}.",
    "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.", "a photo of a weird {}.",
    "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.", "a embroidered {}.",
    "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.",
    "a dark photo of a {}.", "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.",
    "a photo of a cool {}.", "a photo of a small {}.", "a tattoo of the {}.",
)


def test_every_peer_has_the_eight_training_free_benchmarks_only() -> None:
    for name in PEERS:
        assert protocol_benchmarks(name) == TRAINING_FREE_BENCHMARKS
    assert protocol_benchmarks("mvpseg") == BENCHMARKS


@pytest.mark.parametrize(("name", "bench"), PEER_BENCHMARKS)
def test_each_peer_preset_builds_its_inference_config(name: str, bench: str) -> None:
    protocol = get_protocol(name, bench)
    config = protocol.inference_config()
    assert isinstance(config, InferenceConfig)
    check_vit_mode(protocol.vit_mode or "")
    # the peers' shared protocol: mmcv's capped resize without antialiasing, windows stitched on pixels, OpenAI's
    # templates, softmax over every name, the authors' positional-embedding resize
    assert (config.resize_cap, config.long_side, config.resize_filter) == (2048, None, "cv2")
    assert (config.stitch, config.templates, config.synonym_rule) == ("pixels", "openai-imagenet-80", "softmax-max")
    assert config.dense.position_resize == "authors"
    assert 40 <= (config.logit_scale or 0) <= 65
    # every value the preset sets says where it was read
    set_here = {*protocol.inference, *(f"dense.{key}" for key in protocol.inference.get("dense", {}))} - {"dense"}
    assert set_here | {"vit_mode", "class_file"} <= set(protocol.sources)
    assert protocol.sources["repository"].startswith("github.com/")
    assert protocol.record()["inference"]["short_side"] == config.short_side


@pytest.mark.parametrize(("name", "bench"), PEER_BENCHMARKS)
def test_class_file_ships_and_has_a_line_per_class(name: str, bench: str) -> None:
    class_file = get_protocol(name, bench).class_file
    assert class_file is not None
    classes = read_classes_file(class_names_path(class_file))
    assert len(classes) == dataset_info(bench).num_classes
    # background words exactly where the label space has a background class 0
    has_background = bench in ("voc21", "context60", "coco-object")
    assert ("background" in classes[0] or len(classes[0]) > 1) == has_background


def test_sclip_values_that_decide_its_figures() -> None:
    voc21 = get_protocol("sclip", "voc21").inference_config()
    assert (voc21.short_side, voc21.logit_scale, voc21.prob_thd, voc21.area_thd) == (336, 65.0, 0.1, 0.1)
    assert (voc21.mode, voc21.crop_size, voc21.stride, voc21.pamr_steps) == ("slide", 224, 112, 0)
    assert get_protocol("sclip", "context60").inference_config().logit_scale == 50.0
    assert get_protocol("sclip", "coco-stuff").inference_config().short_side == 448  # the others: 336
    no_background = get_protocol("sclip", "ade20k").inference_config()
    assert (no_background.logit_scale, no_background.prob_thd, no_background.area_thd) == (40.0, 0.0, 0.0)
    assert get_protocol("sclip", "voc21").vit_mode == "csa"


def test_each_peers_own_thresholds() -> None:
    def values(name: str, benchmark: str) -> tuple[float | None, float, float]:
        config = get_protocol(name, benchmark).inference_config()
        return config.logit_scale, config.prob_thd, config.area_thd

    assert values("scclip", "coco-object") == (55.0, 0.35, 0.0)
    assert values("scclip", "voc21") == (50.0, 0.15, 0.1)
    assert values("scclip", "context60") == (40.0, 0.15, 0.0)
    assert values("naclip", "coco-object") == (40.0, 0.1, 0.0)  # SCLIP's prob_thd without its logit scale 50
    assert values("clearclip", "voc21") == (50.0, 0.5, 0.0)
    assert values("clearclip", "coco-object") == (50.0, 0.4, 0.0)
    assert values("resclip", "context60") == (40.0, 0.1, 0.0)


def test_short_sides() -> None:
    sides = {name: tuple(get_protocol(name, bench).inference_config().short_side
                         for bench in TRAINING_FREE_BENCHMARKS) for name in PEERS}
    # voc21, context60, coco-object, voc20, context59, coco-stuff, cityscapes, ade20k
    assert sides == {"sclip": (336, 336, 336, 336, 336, 448, 560, 336),
                     "clearclip": (448, 448, 448, 448, 448, 448, 448, 448),
                     "naclip": (336, 336, 336, 336, 336, 336, 560, 336),
                     "resclip": (336, 336, 336, 336, 336, 336, 560, 336),
                     "scclip": (336, 336, 336, 336, 336, 336, 560, 336)}


def test_windows_and_whole_images() -> None:
    for name in ("naclip", "resclip"):  # the whole image on VOC, windows elsewhere
        assert get_protocol(name, "voc21").inference_config().mode == "whole"
        assert get_protocol(name, "voc20").inference_config().mode == "whole"
        assert get_protocol(name, "context59").inference_config().mode == "slide"
    clear = get_protocol("clearclip", "ade20k").inference_config()
    assert (clear.short_side, clear.crop_size, clear.stride) == (448, 448, 224)
    city = get_protocol("clearclip", "cityscapes").inference_config()
    assert (city.crop_size, city.stride) == (224, 224)  # its config sets the crop alone: windows that do not overlap


def test_dense_and_pamr_settings() -> None:
    naclip = get_protocol("naclip", "ade20k").inference_config()
    assert (naclip.pamr_steps, naclip.pamr_dilations, naclip.dense.naclip_std) == (10, (8, 16), 5.0)
    assert get_protocol("naclip", "ade20k").vit_mode == "naclip"
    lambdas = {benchmark: get_protocol("resclip", benchmark).inference_config().dense.resclip_lambda
               for benchmark in TRAINING_FREE_BENCHMARKS}
    assert lambdas == {"voc21": 0.3, "context60": 0.3, "coco-object": 0.4, "voc20": 0.6, "context59": 0.4,
                       "coco-stuff": 0.4, "cityscapes": 0.2, "ade20k": 0.3}
    assert get_protocol("resclip", "voc20").inference_config().dense.resclip_tau == 2.0
    assert get_protocol("resclip", "voc20").inference_config().pamr_steps == 0


def test_vit_modes() -> None:
    modes = {name: get_protocol(name, "voc20").vit_mode for name in PEERS}
    # ClearCLIP's paper (q-q); its released config runs q-k without residual and MLP (docs/protocols.md)
    assert modes == {"sclip": "csa", "clearclip": "qq", "naclip": "naclip", "resclip": "resclip", "scclip": "scclip"}
    assert all(get_protocol(name, "ade20k").vit_mode == mode for name, mode in modes.items())


def test_clearclip_ships_its_own_class_files() -> None:
    assert get_protocol("clearclip", "voc21").class_file == "clearclip/cls_voc21.txt"
    assert read_classes_file(class_names_path("clearclip/cls_voc21.txt"))[0] == ("background",)
    assert read_classes_file(class_names_path("cls_voc21.txt"))[0][:2] == ("sky", "wall")  # SCLIP's
    assert get_protocol("clearclip", "context59").class_file == "cls_context59.txt"  # the same as SCLIP's
    assert get_protocol("scclip", "voc21").class_file == "cls_voc21.txt"


def test_overrides_lay_over_a_protocol() -> None:
    protocol = get_protocol("sclip", "voc21")
    config = protocol.inference_config(pamr_steps=10, dense={"naclip_std": 3.0})
    assert (config.pamr_steps, config.logit_scale, config.dense.naclip_std) == (10, 65.0, 3.0)
    assert config.dense.position_resize == "authors"  # the protocol's dense options stay
    assert get_protocol("SCLIP", "context").benchmark == "context59"  # names as the CLI gives them


def test_unknown_protocol_and_missing_benchmark_are_one_line_errors() -> None:
    with pytest.raises(ValueError, match="unknown protocol 'nope'; known protocols: mvpseg, sclip") as error:
        get_protocol("nope", "voc21")
    assert "\n" not in str(error.value)
    # RF-CLIP's repository holds no code: a name of PROTOCOL_NAMES without a preset
    assert "rfclip" in PROTOCOL_NAMES
    with pytest.raises(ValueError, match="protocol 'rfclip': RF-CLIP's code and configs are not released"):
        get_protocol("rfclip", "voc21")
    with pytest.raises(ValueError, match="protocol 'sclip' has no values for benchmark 'ade847'") as error:
        get_protocol("sclip", "ade847")
    assert "\n" not in str(error.value)


def test_openai_templates_are_the_peers() -> None:
    open_clips = tuple(template("{}") for template in open_clip.zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES)
    assert len(PEER_TEMPLATES) == 80
    assert open_clips == PEER_TEMPLATES
    assert TEMPLATES[:80] == PEER_TEMPLATES  # mvpseg's openai-imagenet-80: the first 80 of its 85
