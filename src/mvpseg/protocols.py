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
--pamr-steps 10``). Only the standard library is imported here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .config import EVAL_PRESETS, InferenceConfig, from_dict, to_dict

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
        values = {**self.inference, **overrides}
        dense = {**self.inference.get("dense", {}), **overrides.get("dense", {})}
        values["dense"] = dense
        return from_dict(InferenceConfig, values)

    def record(self) -> dict[str, Any]:
        """Everything the protocol sets, as plain JSON values: what a result records beside its numbers."""
        return {"name": self.name, "benchmark": self.benchmark, "vit_mode": self.vit_mode,
                "class_file": self.class_file, "inference": to_dict(self.inference_config()), "sources": self.sources}


def _mvpseg_preset(benchmark: str) -> dict[str, Any]:
    dataset = _DATASET_OF.get(benchmark, benchmark)
    return {"inference": dict(EVAL_PRESETS.get(dataset, EVAL_PRESETS["custom"])),
            "sources": {"inference": "mvpseg.config.EVAL_PRESETS (ZegCLIP's protocol, METHOD.md section 3)"}}


#: name -> benchmark -> {"inference": InferenceConfig fields, "vit_mode", "class_file", "sources"}; a "*" entry
#: holds what every benchmark of that repository shares (a benchmark's own entry wins, ``dense`` merged).
_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "mvpseg": {benchmark: _mvpseg_preset(benchmark) for benchmark in BENCHMARKS},
    # The peers' values: filled from their repositories' configs (docs/protocols.md).
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
    if key not in _PRESETS:
        known = [preset for preset in PROTOCOL_NAMES if preset in _PRESETS]
        raise ValueError(f"unknown protocol {name!r}; known protocols: {', '.join(known)}")
    return _PRESETS[key]


def get_protocol(name: str, benchmark: str) -> Protocol:
    """A repository's protocol on one benchmark.

    Args:
        name: a protocol preset (:data:`PROTOCOL_NAMES`).
        benchmark: a benchmark (:data:`BENCHMARKS`; the dataset names voc and context are voc20 and context59).

    Raises:
        ValueError: an unknown protocol, or a benchmark the protocol has no values for (one line each).
    """
    table = _table(name)
    key = {"voc": "voc20", "context": "context59"}.get(benchmark.strip().lower().replace("_", "-"),
                                                        benchmark.strip().lower().replace("_", "-"))
    if key not in table:
        have = ", ".join(protocol_benchmarks(name))
        raise ValueError(f"protocol {name!r} has no values for benchmark {benchmark!r} (it has: {have}); "
                         f"give another --protocol, or the settings as flags")
    shared = table.get("*", {})
    entry = table[key]
    inference = {**shared.get("inference", {}), **entry.get("inference", {})}
    dense = {**shared.get("inference", {}).get("dense", {}), **entry.get("inference", {}).get("dense", {})}
    if dense:
        inference["dense"] = dense
    return Protocol(name=name.strip().lower(), benchmark=key, inference=inference,
                    vit_mode=entry.get("vit_mode", shared.get("vit_mode")),
                    class_file=entry.get("class_file", shared.get("class_file")),
                    sources={**shared.get("sources", {}), **entry.get("sources", {})})

