"""The evaluation protocols of the field, as named presets: mvpseg's own and each peer repository's.

A published mIoU is the dense features **and** the protocol around them: the resize, the windows, the
templates, the class-name file, how synonyms and the background are scored, the thresholds and PAMR. A
:class:`Protocol` holds one repository's values for one benchmark, read from that repository's configs
(``sources`` says which file and line each came from; docs/protocols.md has the table):

- ``mvpseg``: MVP-SEG's zero-shot protocol (ZegCLIP's 512-px windows, MaskCLIP's 85 templates, the best
  synonym's logit, no background words, no PAMR): :data:`mvpseg.config.EVAL_PRESETS`, unchanged.
- ``sclip``, ``clearclip``, ``naclip``, ``resclip``, ``scclip``, ``rfclip``: the training-free papers' own
  (mmcv's resize to a short side S, 224-px windows with stride 112 or the whole image, OpenAI's 80
  templates, softmax over every name then each class's best, a logit scale of 40 to 65, background words,
  ``area_thd``, ``prob_thd``, PAMR), per benchmark.

A protocol is a set of :class:`mvpseg.InferenceConfig` values plus the ViT mode and the class file the
repository runs; every piece stays its own setting, so that a user can mix them (``--protocol sclip
--pamr 10``). Only the standard library is imported here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from .config import EVAL_PRESETS, InferenceConfig, ModelSource, from_dict, to_dict

__all__ = ["BENCHMARKS", "CROSS_DATASET_BENCHMARKS", "PROTOCOL_NAMES", "TRAINING_FREE_BENCHMARKS", "Protocol",
           "get_protocol", "protocol_benchmarks"]

#: The eight benchmarks of the training-free papers, in their tables' column order.
TRAINING_FREE_BENCHMARKS: tuple[str, ...] = ("voc21", "context60", "coco-object", "voc20", "context59", "coco-stuff",
                                             "cityscapes", "ade20k")
#: The cross-dataset benchmarks of the open-vocabulary papers trained on COCO-Stuff, in their column order.
CROSS_DATASET_BENCHMARKS: tuple[str, ...] = ("ade847", "pc459", "ade20k", "context59", "voc20")
#: Every benchmark a protocol may have values for.
BENCHMARKS: tuple[str, ...] = TRAINING_FREE_BENCHMARKS + ("ade847", "pc459")

#: The benchmarks under mvpseg's names for the dataset (voc20 is the zero-shot protocol's "voc", context59 its
#: "context").
_DATASET_OF = {"voc20": "voc", "context59": "context"}


@dataclass
class Protocol:
    """One repository's evaluation of one benchmark."""

    name: str  # the preset: mvpseg, sclip, clearclip, naclip, resclip, scclip or rfclip
    benchmark: str  # one of BENCHMARKS
    inference: dict[str, Any] = field(default_factory=dict)  # InferenceConfig fields (nested dense options as a dict)
    vit_mode: str | None = None  # the ViT mode the repository runs; none: the model's own (mvpseg)
    class_file: str | None = None  # the class-name file it evaluates with (a file shipped in mvpseg/data/class_names); none: the dataset's names
    sources: dict[str, str] = field(default_factory=dict)  # setting -> where it was read ("SCLIP configs/cfg_voc21.py:9")

    def inference_config(self, **overrides: Any) -> InferenceConfig:
        """The protocol's :class:`InferenceConfig`, ``overrides`` (fields; ``dense`` as a dict of its own) on top."""
        return from_dict(InferenceConfig, _laid_over(self.inference, overrides))

    def source_for(self, source: ModelSource) -> ModelSource:
        """``source`` with the protocol's ViT mode when it is MaskCLIP's templates (no prompts, student or ONNX file)
        and names no mode of its own: the one rule of every entry point (the CLI, the Segmenter, the runner)."""
        if self.vit_mode and source.vit_mode is None and not (source.prompts or source.student or source.onnx):
            return replace(source, vit_mode=self.vit_mode)  # type: ignore[arg-type]  # a preset holds a known mode
        return source

    def overrides(self) -> dict[str, Any]:
        """The protocol's InferenceConfig values as flat overrides (dense options as ``dense.FIELD``), to lay over a
        model's own settings (:func:`mvpseg.inference.with_overrides`) under what a user typed."""
        flat = {name: value for name, value in self.inference.items() if name != "dense"}
        flat.update({f"dense.{name}": value for name, value in self.inference.get("dense", {}).items()})
        return flat

    def record(self) -> dict[str, Any]:
        """Everything the protocol sets, as plain JSON values: what a result records beside its numbers."""
        return {"name": self.name, "benchmark": self.benchmark, "vit_mode": self.vit_mode,
                "class_file": self.class_file, "inference": to_dict(self.inference_config()), "sources": self.sources}


def _laid_over(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """InferenceConfig values ``top`` over ``base``, the dense options (a dict of their own) merged field by field."""
    values = {**base, **top}
    dense = {**base.get("dense", {}), **top.get("dense", {})}
    if dense:
        values["dense"] = dense
    return values


def _mvpseg_preset(benchmark: str) -> dict[str, Any]:
    dataset = _DATASET_OF.get(benchmark, benchmark)
    return {"inference": dict(EVAL_PRESETS.get(dataset, EVAL_PRESETS["custom"])),
            "sources": {"inference": "mvpseg.config.EVAL_PRESETS (ZegCLIP's protocol, METHOD.md section 3)"}}


#: The peers' repositories, at the commits their values were read from (every source below is a line there).
_REPOSITORIES = {
    "SCLIP": "github.com/wangf3014/SCLIP@b56bd3014b9e8a3ee3450bcfc53700a67d627b7a",
    "ClearCLIP": "github.com/mc-lan/ClearCLIP@ad68a404d55d48d27330b93554eb64a234ff717f",
    "NACLIP": "github.com/sinahmr/NACLIP@0cac3a651f753b11315ea799cfbfabf79da1bd76",
    "ResCLIP": "github.com/yvhangyang/ResCLIP@0e085f7f52f06098b383599e9653cd28cc665a8c",
    "SC-CLIP": "github.com/SuleBai/SC-CLIP@0417ba92851e9dd7432d608f10a0804d01a23062",
}

#: Each benchmark's config and class file in the peers' repositories (SCLIP's names, which all of them kept).
_PEER_FILES = {
    "voc21": ("configs/cfg_voc21.py", "cls_voc21.txt"),
    "context60": ("configs/cfg_context60.py", "cls_context60.txt"),
    "coco-object": ("configs/cfg_coco_object.py", "cls_coco_object.txt"),
    "voc20": ("configs/cfg_voc20.py", "cls_voc20.txt"),
    "context59": ("configs/cfg_context59.py", "cls_context59.txt"),
    "coco-stuff": ("configs/cfg_coco_stuff164k.py", "cls_coco_stuff.txt"),
    "cityscapes": ("configs/cfg_city_scapes.py", "cls_city_scapes.txt"),
    "ade20k": ("configs/cfg_ade20k.py", "cls_ade20k.txt"),
}

#: A setting's value and where the repository sets it: "path:line" (shared settings) or the line of the
#: benchmark's config file (a benchmark's own). A setting is an InferenceConfig field, "dense.FIELD" (a
#: DenseOptions field), "vit_mode" or "class_file".
_Setting = tuple[Any, str]
_ConfigSetting = tuple[Any, int]


def _entry(repo: str, settings: dict[str, _Setting]) -> dict[str, Any]:
    """A table entry from ``{setting: (value, "path:line")}``, each source recorded as ``"REPO path:line"``."""
    entry: dict[str, Any] = {"inference": {}, "sources": {}}
    for setting, (value, where) in settings.items():
        if setting in ("vit_mode", "class_file"):
            entry[setting] = value
        elif setting.startswith("dense."):
            entry["inference"].setdefault("dense", {})[setting.removeprefix("dense.")] = value
        else:
            entry["inference"][setting] = value
        entry["sources"][setting] = f"{repo} {where}"
    return entry


def _peer(repo: str, shared: dict[str, _Setting], benchmarks: dict[str, dict[str, _ConfigSetting]],
          own_class_files: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """A peer's table: ``shared`` (its segmentor's defaults) under "*", and per benchmark the values its config
    file sets, ``{setting: (value, line)}``. Every config holds ``Resize(scale=(2048, S), keep_ratio=True)``
    (``short_side`` S, read there with the cap 2048) and ``name_path`` on line 5: the class file, SCLIP's
    unless ``own_class_files`` names the repository's own copy (shipped under class_names/)."""
    table = {"*": _entry(repo, shared)}
    table["*"]["sources"]["repository"] = _REPOSITORIES[repo]
    for benchmark, values in benchmarks.items():
        config, class_file = _PEER_FILES[benchmark]
        settings = {setting: (value, f"{config}:{line}") for setting, (value, line) in values.items()}
        settings["resize_cap"] = (2048, settings["short_side"][1])
        settings["class_file"] = ((own_class_files or {}).get(benchmark, class_file), f"{config}:5")
        table[benchmark] = _entry(repo, settings)
    return table


# Every peer evaluates with mmcv 2.0.1 (its README or requirements pin it), whose Resize is cv2's bilinear
# without antialiasing (resize_filter cv2: OpenCV itself); stitches windows on pixels (each window's cosines upsampled to its crop, summed and
# divided by the count, then upsampled to the image's own size); encodes every name with OpenAI's 80 ImageNet
# templates (prompts/imagenet_template.py, equal to open_clip's OPENAI_IMAGENET_TEMPLATES: tests); scores a class
# by softmax over every name (times logit_scale) then its best name's probability; and resizes the positional
# embedding with F.interpolate(scale_factor=(g + 0.1) / g0, bicubic) (g0 = 14 on ViT-B/16).
_SCLIP = _peer("SCLIP", {
    "resize_filter": ("cv2", "README.md:27"),
    "mode": ("slide", "clip_segmentor.py:21,141"),
    "crop_size": (224, "clip_segmentor.py:21"),
    "stride": (112, "clip_segmentor.py:21"),
    "stitch": ("pixels", "clip_segmentor.py:109-119"),
    "templates": ("openai-imagenet-80", "clip_segmentor.py:38"),
    "synonym_rule": ("softmax-max", "clip_segmentor.py:151-159"),
    "logit_scale": (40.0, "clip_segmentor.py:20"),
    "prob_thd": (0.0, "clip_segmentor.py:20"),
    "area_thd": (0.0, "clip_segmentor.py:21"),  # None: off
    "pamr_steps": (0, "clip_segmentor.py:20"),
    "pamr_dilations": ((8, 16), "clip_segmentor.py:20"),
    "dense.position_resize": ("authors", "clip/model.py:273"),
    "vit_mode": ("csa", "clip_segmentor.py:63"),
}, {
    "voc21": {"short_side": (336, 17), "logit_scale": (65.0, 6), "prob_thd": (0.1, 7), "area_thd": (0.1, 8)},
    "context60": {"short_side": (336, 16), "logit_scale": (50.0, 6), "prob_thd": (0.1, 7)},
    "coco-object": {"short_side": (336, 16), "logit_scale": (50.0, 6), "prob_thd": (0.1, 7)},
    "voc20": {"short_side": (336, 14)},
    "context59": {"short_side": (336, 14)},
    "coco-stuff": {"short_side": (448, 14)},
    "cityscapes": {"short_side": (560, 14)},
    "ade20k": {"short_side": (336, 14)},
})

# ClearCLIP: 448-px windows with stride 224 (Cityscapes: 224 with stride 224, no overlap), short side 448, logit
# scale 50, no area_thd and no PAMR; its own VOC and COCO-Object class files (one name a class, "background").
# Its released base_config.py:6 sets model_type='vanilla' (the block's own q-k attention, no residual, no MLP),
# not the paper's q-q ('ClearCLIP', open_clip/transformer.py:614-616): vit_mode follows the paper here (the
# released form is mvpseg's qk: --protocol clearclip --vit-mode qk).
_CLEARCLIP = _peer("ClearCLIP", {
    "resize_filter": ("cv2", "requirements.txt:10"),
    "mode": ("slide", "clearclip_segmentor.py:23,209"),
    "crop_size": (448, "clearclip_segmentor.py:23"),
    "stride": (224, "clearclip_segmentor.py:23"),
    "stitch": ("pixels", "clearclip_segmentor.py:175-190"),
    "partial_patches": ("pad", "clearclip_segmentor.py:168-180,246-258"),
    "templates": ("openai-imagenet-80", "clearclip_segmentor.py:98"),
    "synonym_rule": ("softmax-max", "clearclip_segmentor.py:219-227"),
    "logit_scale": (50.0, "clearclip_segmentor.py:23"),
    "prob_thd": (0.0, "clearclip_segmentor.py:23"),
    "area_thd": (0.0, "clearclip_segmentor.py:22-23"),  # no such argument
    "pamr_steps": (0, "clearclip_segmentor.py:22-23"),  # no PAMR
    "dense.position_resize": ("authors", "open_clip/transformer.py:579"),
    "vit_mode": ("qq", "configs/base_config.py:6"),  # released: 'vanilla' (q-k); the paper: q-q
}, {
    "voc21": {"short_side": (448, 15), "prob_thd": (0.5, 6)},
    "context60": {"short_side": (448, 15), "prob_thd": (0.15, 6)},
    "coco-object": {"short_side": (448, 15), "prob_thd": (0.4, 6)},
    "voc20": {"short_side": (448, 14)},
    "context59": {"short_side": (448, 14)},
    "coco-stuff": {"short_side": (448, 14)},
    "cityscapes": {"short_side": (448, 15), "crop_size": (224, 6)},
    "ade20k": {"short_side": (448, 14)},
}, own_class_files={"voc21": "clearclip/cls_voc21.txt", "voc20": "clearclip/cls_voc20.txt",
                    "coco-object": "clearclip/cls_coco_object.txt"})

# NACLIP: PAMR on by default (10 steps, dilations 8 and 16: its README's figures), the whole image on VOC, logit
# scale 40 everywhere, no area_thd; COCO-Stuff at short side 336 (SCLIP: 448).
_NACLIP = _peer("NACLIP", {
    "resize_filter": ("cv2", "README.md:24"),
    "mode": ("slide", "naclip.py:22,121"),
    "crop_size": (224, "naclip.py:22"),
    "stride": (112, "naclip.py:22"),
    "stitch": ("pixels", "naclip.py:100-107,127"),
    "templates": ("openai-imagenet-80", "naclip.py:35"),
    "synonym_rule": ("softmax-max", "naclip.py:142-149"),
    "logit_scale": (40.0, "naclip.py:22"),
    "prob_thd": (0.0, "naclip.py:22"),
    "area_thd": (0.0, "naclip.py:20-22"),  # no such argument
    "pamr_steps": (10, "naclip.py:21"),
    "pamr_dilations": ((8, 16), "naclip.py:21"),
    "dense.naclip_std": (5.0, "naclip.py:21"),
    "dense.position_resize": ("authors", "clip/model.py:144"),
    "vit_mode": ("naclip", "naclip.py:21"),
}, {
    "voc21": {"short_side": (336, 16), "prob_thd": (0.1, 6), "mode": ("whole", 7)},
    "context60": {"short_side": (336, 15), "prob_thd": (0.1, 6)},
    "coco-object": {"short_side": (336, 15), "prob_thd": (0.1, 6)},
    "voc20": {"short_side": (336, 15), "mode": ("whole", 6)},
    "context59": {"short_side": (336, 14)},
    "coco-stuff": {"short_side": (336, 14)},
    "cityscapes": {"short_side": (560, 14)},
    "ade20k": {"short_side": (336, 14)},
})

# ResCLIP (on NACLIP, arch 'wo_resi'): NACLIP's windows, resize and thresholds, no PAMR; RCS's
# attn_rcs_weights=[tau, lambda] per benchmark. Its semantic feedback refinement is on in every run (the
# segmentor's ``self.use_sfr=use_sfr,`` makes a tuple, always true), with temp_thd and attn_sfr_weights=[tau,
# lambda] per benchmark and delete_same_entity=True in every config (mvpseg.feedback always separates entities).
_RESCLIP = _peer("ResCLIP", {
    "resize_filter": ("cv2", "README.md:68"),
    "mode": ("slide", "resclip_segmentor.py:26,145"),
    "crop_size": (224, "resclip_segmentor.py:26"),
    "stride": (112, "resclip_segmentor.py:25"),
    "stitch": ("pixels", "resclip_segmentor.py:121-129,155"),
    "templates": ("openai-imagenet-80", "resclip_segmentor.py:39"),
    "synonym_rule": ("softmax-max", "resclip_segmentor.py:167-173"),
    "logit_scale": (40.0, "resclip_segmentor.py:25"),
    "prob_thd": (0.0, "resclip_segmentor.py:25"),
    "area_thd": (0.0, "resclip_segmentor.py:25"),  # None: off
    "pamr_steps": (0, "resclip_segmentor.py:24"),
    "pamr_dilations": ((8, 16), "resclip_segmentor.py:25"),
    "dense.naclip_std": (5.0, "resclip_segmentor.py:24"),
    "dense.position_resize": ("authors", "clip/model.py:387"),
    "vit_mode": ("resclip", "resclip_segmentor.py:24"),
    "dense.resclip_sfr": (True, "resclip_segmentor.py:62"),
}, {
    "voc21": {"short_side": (336, 20), "prob_thd": (0.1, 6), "mode": ("whole", 7),
        "dense.resclip_tau": (2.0, 10), "dense.resclip_lambda": (0.3, 10),
        "dense.sfr_threshold": (0.5, 8), "dense.sfr_tau": (2.2, 11), "dense.sfr_lambda": (0.7, 11)},
    "context60": {"short_side": (336, 19), "prob_thd": (0.1, 6),
        "dense.resclip_tau": (2.0, 9), "dense.resclip_lambda": (0.3, 9),
        "dense.sfr_threshold": (0.3, 7), "dense.sfr_tau": (1.8, 10), "dense.sfr_lambda": (0.7, 10)},
    "coco-object": {"short_side": (336, 19), "prob_thd": (0.1, 6),
        "dense.resclip_tau": (2.0, 9), "dense.resclip_lambda": (0.4, 9),
        "dense.sfr_threshold": (0.11, 7), "dense.sfr_tau": (1.8, 10), "dense.sfr_lambda": (0.7, 10)},
    "voc20": {"short_side": (336, 19), "mode": ("whole", 6),
        "dense.resclip_tau": (2.0, 9), "dense.resclip_lambda": (0.6, 9),
        "dense.sfr_threshold": (0.1, 7), "dense.sfr_tau": (2.1, 10), "dense.sfr_lambda": (0.6, 10)},
    "context59": {"short_side": (336, 18), "dense.resclip_tau": (2.0, 8), "dense.resclip_lambda": (0.4, 8),
        "dense.sfr_threshold": (0.25, 6), "dense.sfr_tau": (1.8, 9), "dense.sfr_lambda": (0.7, 9)},
    "coco-stuff": {"short_side": (336, 18), "dense.resclip_tau": (2.0, 8), "dense.resclip_lambda": (0.4, 8),
        "dense.sfr_threshold": (0.11, 6), "dense.sfr_tau": (1.8, 9), "dense.sfr_lambda": (0.7, 9)},
    "cityscapes": {"short_side": (560, 18), "dense.resclip_tau": (2.0, 8), "dense.resclip_lambda": (0.2, 8),
        "dense.sfr_threshold": (0.1, 6), "dense.sfr_tau": (2.1, 9), "dense.sfr_lambda": (0.6, 9)},
    "ade20k": {"short_side": (336, 18), "dense.resclip_tau": (2.0, 8), "dense.resclip_lambda": (0.3, 8),
        "dense.sfr_threshold": (0.25, 6), "dense.sfr_tau": (2.1, 9), "dense.sfr_lambda": (0.7, 9)},
})

# SC-CLIP: SCLIP's segmentor (windows, area_thd on VOC-21, no PAMR) with its own thresholds; its dense mode's
# settings (pre_adjust_idx 8, post_adjust_idx 3, multi-level 3-10, res_cls 0.3) are the same in every config.
_SCCLIP = _peer("SC-CLIP", {
    "resize_filter": ("cv2", "README.md:27"),
    "mode": ("slide", "scclip_segmentor.py:21,147"),
    "crop_size": (224, "scclip_segmentor.py:21"),
    "stride": (112, "scclip_segmentor.py:21"),
    "stitch": ("pixels", "scclip_segmentor.py:115-125"),
    "templates": ("openai-imagenet-80", "scclip_segmentor.py:45"),
    "synonym_rule": ("softmax-max", "scclip_segmentor.py:157-165"),
    "logit_scale": (40.0, "scclip_segmentor.py:20"),
    "prob_thd": (0.0, "scclip_segmentor.py:20"),
    "area_thd": (0.0, "scclip_segmentor.py:21"),  # None: off
    "pamr_steps": (0, "scclip_segmentor.py:20"),
    "pamr_dilations": ((8, 16), "scclip_segmentor.py:20"),
    "dense.position_resize": ("authors", "clip/model.py:385"),
    "vit_mode": ("scclip", "configs/base_config.py:4-8"),
}, {
    "voc21": {"short_side": (336, 16), "logit_scale": (50.0, 7), "prob_thd": (0.15, 7), "area_thd": (0.1, 6)},
    "context60": {"short_side": (336, 15), "prob_thd": (0.15, 6)},
    "coco-object": {"short_side": (336, 15), "logit_scale": (55.0, 6), "prob_thd": (0.35, 6)},
    "voc20": {"short_side": (336, 14)},
    "context59": {"short_side": (336, 14)},
    "coco-stuff": {"short_side": (336, 14)},
    "cityscapes": {"short_side": (560, 14)},
    "ade20k": {"short_side": (336, 14)},
})

#: name -> benchmark -> {"inference": InferenceConfig fields, "vit_mode", "class_file", "sources"}; a "*" entry
#: holds what every benchmark of that repository shares (a benchmark's own entry wins, ``dense`` merged). The
#: peers have values for the eight training-free benchmarks only (none has a config for ade847 or pc459); RF-CLIP
#: has none at all, as its repository holds a README and no code yet (docs/protocols.md).
_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "mvpseg": {benchmark: _mvpseg_preset(benchmark) for benchmark in BENCHMARKS},
    "sclip": _SCLIP,
    "clearclip": _CLEARCLIP,
    "naclip": _NACLIP,
    "resclip": _RESCLIP,
    "scclip": _SCCLIP,
}

#: The protocol presets, in the order docs and --help list them.
PROTOCOL_NAMES: tuple[str, ...] = ("mvpseg", "sclip", "clearclip", "naclip", "resclip", "scclip", "rfclip")


def protocol_benchmarks(name: str) -> tuple[str, ...]:
    """The benchmarks a protocol has values for, in :data:`BENCHMARKS` order.

    Raises:
        ValueError: an unknown protocol (one line naming the known ones).
    """
    table = _table(name)
    return tuple(benchmark for benchmark in BENCHMARKS if benchmark in table)


def _table(name: str) -> dict[str, dict[str, Any]]:
    key = name.strip().lower()
    if key == "rfclip" and key not in _PRESETS:
        raise ValueError("protocol 'rfclip': RF-CLIP's code and configs are not released (liblacklucy/RF-CLIP holds a "
                         "README only), so mvpseg has no values to follow; see docs/protocols.md")
    if key not in _PRESETS:
        known = [preset for preset in PROTOCOL_NAMES if preset in _PRESETS]
        raise ValueError(f"unknown protocol {name!r}; known protocols: {', '.join(known)}")
    return _PRESETS[key]


def get_protocol(name: str, benchmark: str | None = None) -> Protocol:
    """A repository's protocol on one benchmark, or (no benchmark) its settings for any image.

    Args:
        name: a protocol preset (:data:`PROTOCOL_NAMES`), or ``NAME:BENCHMARK``.
        benchmark: a benchmark (:data:`BENCHMARKS`; the dataset names voc and context are voc20 and context59).
            None: for each setting, the value most of the protocol's benchmarks share (first in
            :data:`BENCHMARKS` order on a tie), what ``mvpseg segment --protocol NAME`` runs on any photo
            (SCLIP's: short side 336, 224-px windows, logit scale 40, no thresholds); its ``benchmark`` is "any".

    Raises:
        ValueError: an unknown protocol, or a benchmark the protocol has no values for (one line each).
    """
    if ":" in name:
        name, _, named = name.partition(":")
        if benchmark is not None and named.strip() and named.strip() != benchmark:
            raise ValueError(f"protocol {name}:{named} names another benchmark than {benchmark!r}")
        benchmark = named.strip() or benchmark
    table = _table(name)
    if benchmark is None:
        return _typical(name.strip().lower(), table)
    key = benchmark.strip().lower().replace("_", "-")
    key = {"voc": "voc20", "context": "context59"}.get(key, key)
    if key not in table or key == "*":
        have = ", ".join(protocol_benchmarks(name))
        raise ValueError(f"protocol {name!r} has no values for benchmark {benchmark!r} (it has: {have}); "
                         f"give another --protocol, or the settings as flags")
    shared = table.get("*", {})
    entry = table[key]
    inference = _laid_over(shared.get("inference", {}), entry.get("inference", {}))
    return Protocol(name=name.strip().lower(), benchmark=key, inference=inference,
                    vit_mode=entry.get("vit_mode", shared.get("vit_mode")),
                    class_file=entry.get("class_file", shared.get("class_file")),
                    sources={**shared.get("sources", {}), **entry.get("sources", {})})


def _typical(name: str, table: dict[str, dict[str, Any]]) -> Protocol:
    """The protocol's settings for an image of no benchmark: each value the most of its benchmarks hold."""
    each = [get_protocol(name, benchmark) for benchmark in protocol_benchmarks(name)]
    flat = [{**{key: value for key, value in p.inference.items() if key != "dense"},
             **{f"dense.{key}": value for key, value in p.inference.get("dense", {}).items()}} for p in each]
    inference: dict[str, Any] = {}
    for key in dict.fromkeys(key for values in flat for key in values):
        held = [repr(values[key]) for values in flat if key in values]
        if len(held) * 2 <= len(flat):  # a setting most benchmarks leave at its default stays so
            continue
        typical = max(dict.fromkeys(held), key=held.count)
        value = next(values[key] for values in flat if repr(values.get(key)) == typical)
        if key.startswith("dense."):
            inference.setdefault("dense", {})[key.removeprefix("dense.")] = value
        else:
            inference[key] = value
    return Protocol(name=name, benchmark="any", inference=inference, vit_mode=each[0].vit_mode, class_file=None,
                    sources={**table.get("*", {}).get("sources", {}),
                             "benchmark": "any: each setting as most of its benchmarks have it"})
