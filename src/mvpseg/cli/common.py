"""What several commands share: usage errors, the CLIP options, the inference options."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from ..config import DEFAULT_CLIP, TEMPLATE_CLIP, TEMPLATE_VIT_MODE, VIT_MODES, InferenceConfig
from .flags import add_config_flags, apply_overrides, overrides

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["UsageError", "add_clip_arguments", "add_inference_flags", "clip_source", "inference_config",
           "inference_overrides"]


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
                       help="open_clip pretrained tag (openai, laion2b_s34b_b88k, ...; 'mvpseg' for mvpseg-tiny's "
                            f"shipped weights), or 'none' for random weights (default: {default_from} when it names a "
                            f"tag, else openai)")
    group.add_argument("--clip-weights", metavar="PATH", default=None,
                       help="a local CLIP weights file (OpenAI .pt or open_clip .pt/.bin/.safetensors); "
                            "overrides --pretrained. Without network, download it elsewhere and pass it here, "
                            "or point the MVPSEG_CLIP_CACHE environment variable at open_clip's cache folder")
    group.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
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


def add_inference_flags(parser: argparse.ArgumentParser, presets: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """One flag per :class:`mvpseg.config.InferenceConfig` field (``--mode``, ``--short-side``, ...)."""
    add_config_flags(parser, InferenceConfig, title="inference", presets=presets)


def inference_config(args: argparse.Namespace, base: Mapping[str, Any] | None = None) -> InferenceConfig:
    """The InferenceConfig of the given inference flags laid over ``base`` (a preset's fields)."""
    return apply_overrides(InferenceConfig(**(base or {})), overrides(args))


def inference_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The inference fields typed on the command line, to lay over the settings a checkpoint was made for."""
    return {name: value for name, value in overrides(args).items() if name in InferenceConfig.__dataclass_fields__}
