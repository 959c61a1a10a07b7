"""What several commands share: usage errors, the CLIP options, the inference options, and the run machinery of
the training commands (``train``, ``transfer``: a run's config from a preset or a ``config.json`` and the flags
typed, and the launch under torchrun)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import (
    DEFAULT_CLIP,
    TEMPLATE_CLIP,
    TEMPLATE_VIT_MODE,
    VIT_MODES,
    InferenceConfig,
    ModelSource,
    RunConfig,
)
from .flags import add_config_flags, apply_overrides, overrides, read_config_file

if TYPE_CHECKING:
    import torch

    from ..protocols import Protocol

__all__ = ["RENAME", "UsageError", "add_clip_arguments", "add_inference_flags", "add_model_flags", "add_run_flags",
           "clip_source", "inference_config", "inference_overrides", "launch", "load_segmenter", "model_source",
           "protocol_line", "protocol_of", "run_config"]


_CLIP_WEIGHTS_HELP = (
    "a local CLIP weights file (OpenAI .pt or open_clip .pt/.bin/.safetensors), or a Hugging Face transformers "
    "CLIPModel folder or Hub id (org/name; its config.json gives the architecture); overrides --pretrained. Without "
    "network, download it elsewhere and pass it here, or point the MVPSEG_CLIP_CACHE environment variable at "
    "open_clip's cache folder")
_DEVICE_HELP = "cpu, cuda, cuda:1, ... (default: cuda when available)"


class UsageError(Exception):
    """A bad argument: reported as one line, exit status 2."""


def add_clip_arguments(parser: argparse.ArgumentParser, default_from: str = "the prompt checkpoint's",
                       vit_mode: bool = False) -> None:
    """The CLIP options every command that loads a CLIP shares (destinations clip, pretrained, clip_weights, device).

    Args:
        parser: the command's parser.
        default_from: whose CLIP (architecture and weights) is the default when neither is given.
        vit_mode: add ``--vit-mode`` (destination vit_mode), for the commands that segment with prompts or templates.
    """
    group = parser.add_argument_group("CLIP")
    group.add_argument("--clip", default=None,
                       help=f"open_clip architecture (RN50, RN101, ViT-B-16, ... or mvpseg-tiny); "
                            f"default: {default_from}, else {DEFAULT_CLIP} (with MaskCLIP's templates: "
                            f"{TEMPLATE_CLIP})")
    group.add_argument("--pretrained", default=None,
                       help="open_clip pretrained tag (openai, laion2b_s34b_b88k, ...; 'mvpseg' for the shipped "
                            f"weights of the tiny CLIPs mvpseg-tiny*), or 'none' for random weights (default: "
                            f"{default_from} when it names a tag, else the CLIP's own: mvpseg for the tiny CLIPs, "
                            f"else openai)")
    group.add_argument("--clip-weights", metavar="PATH", default=None,
                       help=_CLIP_WEIGHTS_HELP)
    group.add_argument("--device", default=None, help=_DEVICE_HELP)
    if vit_mode:
        group.add_argument("--vit-mode", choices=VIT_MODES, default=None,
                           help=f"how a ViT's last block gives dense features (docs/method.md); default: the prompt "
                                f"checkpoint's, else {TEMPLATE_VIT_MODE} (SC-CLIP's; with MaskCLIP's templates the "
                                f"CLIP is {TEMPLATE_CLIP} unless --clip names another). ResNets ignore it")


def clip_source(args: argparse.Namespace, default: str | None = "auto") -> str | None:
    """The ``pretrained`` argument of load_clip: --clip-weights, else the --pretrained tag ('none': None).

    Args:
        args: parsed options of :func:`add_clip_arguments`.
        default: the source when neither option is given ("auto": :func:`mvpseg.build.from_pretrained` takes
            the prompt checkpoint's).
    """
    if args.clip_weights:
        return args.clip_weights
    value = default if args.pretrained is None else args.pretrained
    return None if value is None or str(value).lower() == "none" else value


def add_model_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = (),
                    title: str = "model (mvpseg.ModelSource)") -> None:
    """The flags of :class:`mvpseg.config.ModelSource` (``--clip``, ``--pretrained``, ``--prompts``, ``--student``,
    ``--onnx``, ``--vit-mode``; less ``skip``), ``--clip-weights`` (a local file, over ``--pretrained``) and
    ``--device``: what every command that segments takes, each flag's help its field's comment."""
    add_config_flags(parser, ModelSource, skip=skip, title=title)
    group = parser.add_argument_group("where")
    group.add_argument("--clip-weights", metavar="PATH", default=None,
                       help=_CLIP_WEIGHTS_HELP)
    group.add_argument("--device", default=None, help=_DEVICE_HELP)


def model_source(args: argparse.Namespace, protocol: Protocol | None = None, **defaults: Any) -> ModelSource:
    """The :class:`mvpseg.config.ModelSource` of :func:`add_model_flags`' flags (``defaults`` under what was typed);
    a bad combination is a :class:`UsageError`. With a ``protocol``, MaskCLIP's templates (no prompts, student or
    ONNX file) take its ViT mode unless ``--vit-mode`` is given."""
    typed = {name: value for name, value in overrides(args).items() if name in ModelSource.__dataclass_fields__}
    if getattr(args, "clip_weights", None):
        typed["pretrained"] = args.clip_weights
    try:
        source = ModelSource(**{**defaults, **typed})
        return protocol.source_for(source) if protocol is not None else source
    except ValueError as error:
        raise UsageError(str(error)) from error


def load_segmenter(source: ModelSource, device: str | torch.device | None = None,
                   inference: Mapping[str, Any] | None = None) -> Any:
    """The :class:`mvpseg.Segmenter` of a model source, or for an ONNX file its ``OnnxSegmenter`` (CPU);
    ``inference``: InferenceConfig fields over the settings the checkpoint or file was made for."""
    if source.onnx is not None:
        from ..export import OnnxSegmenter

        return OnnxSegmenter.from_source(source, overrides=inference)
    from ..inference import Segmenter

    return Segmenter.from_source(source, device=device, overrides=inference)


#: Inference fields whose flag is not named after the field.
INFERENCE_RENAME = {"pamr_steps": "pamr"}


def add_inference_flags(parser: argparse.ArgumentParser, presets: Mapping[str, Mapping[str, Any]] | None = None,
                        protocol_benchmark: str = "") -> None:
    """One flag per :class:`mvpseg.config.InferenceConfig` field (``--mode``, ``--short-side``, ``--pamr``, the dense
    options' ``--position-resize``, ...), and ``--protocol`` (:func:`protocol_of`).

    Args:
        parser: the command's parser.
        presets: each named preset's values, shown in the flags' help.
        protocol_benchmark: how the command picks a protocol's benchmark, for ``--protocol``'s help.
    """
    from ..protocols import PROTOCOL_NAMES  # standard library only

    add_config_flags(parser, InferenceConfig, title="inference", presets=presets, rename=INFERENCE_RENAME)
    parser.add_argument("--protocol", metavar="NAME[:BENCHMARK]",
                        help=f"an evaluation protocol's settings ({', '.join(PROTOCOL_NAMES)}; docs/protocols.md): "
                             f"its resize, windows, templates, synonym rule, logit scale, thresholds, PAMR, dense "
                             f"options and (with MaskCLIP's templates) ViT mode, on one benchmark{protocol_benchmark}; "
                             f"inference flags given too are laid over it")


def protocol_of(args: argparse.Namespace, benchmark: str | None = None) -> Protocol | None:
    """The :class:`mvpseg.protocols.Protocol` of ``--protocol NAME[:BENCHMARK]`` (``benchmark`` when the flag names
    none), or None without the flag; an unknown protocol or a benchmark it has no values for is a UsageError."""
    text = getattr(args, "protocol", None)
    if not text:
        return None
    from ..protocols import get_protocol

    try:
        return get_protocol(text, benchmark)
    except ValueError as error:
        raise UsageError(f"--protocol: {error}") from error


def protocol_line(protocol: Protocol | None, config: InferenceConfig) -> str:
    """One line saying how the scores were made: the protocol (or the settings' own) and its values that matter."""
    what = f"protocol {protocol.name} ({protocol.benchmark})" if protocol is not None else "settings"
    size = (f"short side {config.short_side}" + (f" (cap {config.resize_cap})" if config.resize_cap else "")
            if config.long_side is None else f"long side {config.long_side}")
    windows = "whole image" if config.mode == "whole" else f"windows {config.crop_size}/{config.window_stride}"
    scale = "the classifier's" if config.logit_scale is None else f"{config.logit_scale:g}"
    return (f"{what}: {size}, {windows} stitched on {config.stitch}, templates {config.templates}, synonyms "
            f"{config.synonym_rule}, logit scale {scale}, area_thd {config.area_thd:g}, prob_thd {config.prob_thd:g}, "
            f"PAMR {config.pamr_steps or 'off'}, positions {config.dense.position_resize}")


def inference_config(args: argparse.Namespace, base: Mapping[str, Any] | None = None) -> InferenceConfig:
    """The InferenceConfig of the given inference flags laid over ``base`` (a preset's fields)."""
    return apply_overrides(InferenceConfig(**(base or {})), inference_overrides(args))


def inference_overrides(args: argparse.Namespace, protocol: Protocol | None = None) -> dict[str, Any]:
    """The inference fields typed on the command line (dense options as ``dense.FIELD``), over a protocol's settings
    when one is given: what is laid over the settings a checkpoint was made for."""
    typed = {name: value for name, value in overrides(args).items()
             if name.split(".", 1)[0] in InferenceConfig.__dataclass_fields__}
    if protocol is None:
        return typed
    return {**protocol.overrides(), **typed}


# --- the training commands' runs -------------------------------------------------------------------------

#: Fields whose flag is not named after the field (the flag names mvpseg has always had).
RENAME = {"model.use_gpr": "gpr", "loss.seg": "seg-weight", "loss.cls": "cls-weight", "loss.oc": "oc-weight"}
#: Fields set through the shared CLIP options (--clip, --pretrained / --clip-weights, --device).
_CLIP_FIELDS = ("clip", "pretrained", "device")


def add_run_flags(parser: argparse.ArgumentParser, cls: type, presets: Mapping[str, Mapping[str, Any]],
                  rename: Mapping[str, str] | None = None, titles: Mapping[str, str] | None = None) -> None:
    """--config, --resume, --quiet, the CLIP options and one flag per field of the run config ``cls``."""
    parser.add_argument("--config", metavar="FILE",
                        help="start from a run's config.json (every field of that run; flags given here override "
                             "them), e.g. to repeat or resume a run")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_flags(parser, cls, rename=rename, skip=_CLIP_FIELDS, presets=presets, title="run", titles=titles)
    add_clip_arguments(parser, default_from="the --config file's")


def run_config(args: argparse.Namespace, cls: type[RunConfig], presets: Mapping[str, Mapping[str, Any]]) -> Any:
    """The run's config: a --config file or the dataset's preset, then the flags given.

    Raises:
        UsageError: neither --dataset nor --config, no --data-root, or an unreadable config file.
    """
    given = overrides(args)
    if args.config:
        try:
            base = read_config_file(args.config, cls)
        except ValueError as error:
            raise UsageError(str(error)) from error
    else:
        dataset = given.get("dataset")
        if dataset is None:
            raise UsageError(f"give --dataset ({', '.join(presets)} or custom) or --config RUN/config.json")
        from ..data.classes import canonical_name

        try:
            key = canonical_name(dataset)
        except ValueError as error:
            raise UsageError(str(error)) from error
        base = cls.from_dict(dict(presets.get(key, {"dataset": key})))  # an alias ("coco_stuff") keeps its preset
        given["dataset"] = key
    if args.clip:
        given["clip"] = args.clip
    if args.pretrained is not None or args.clip_weights:
        given["pretrained"] = clip_source(args)
    if args.device:
        given["device"] = args.device
    try:
        config = apply_overrides(base, given)
    except (TypeError, ValueError) as error:
        raise UsageError(str(error)) from error
    if not config.data_root:
        raise UsageError("give --data-root DIR: the folder holding the dataset")
    return config


def launch(loop: Callable[..., Path], config: Any, args: argparse.Namespace, what: str) -> int:
    """Run a training loop (every process under torchrun), say where its result went, end the process group."""
    from ..distributed import cleanup, is_main_process

    try:
        path = loop(config, resume=args.resume, progress=not args.quiet)
        if is_main_process() and not args.quiet:
            print(f"{what} written to {path}", file=sys.stderr)
    finally:
        cleanup()
    return 0
