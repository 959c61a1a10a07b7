"""What every config shares: the default CLIPs, the ViT modes, the precisions, and configs as plain JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, fields, is_dataclass
from typing import Any, Literal, get_args, get_type_hints

__all__ = ["DEFAULT_CLIP", "PRECISIONS", "TEMPLATE_CLIP", "TEMPLATE_VIT_MODE", "TINY_CLIP_NAME", "VIT_MODES", "Precision",
           "ViTMode", "check_vit_mode", "from_dict", "to_dict"]

#: The CLIP used when none is named (and no checkpoint names one).
DEFAULT_CLIP = "RN50"
#: The CLIP and ViT mode of zero-training segmentation (no prompts, no student): the first of mvpseg's
#: dense modes in published tables, SC-CLIP on ViT-B/16 (docs/modes.md).
TEMPLATE_CLIP = "ViT-B-16"
TEMPLATE_VIT_MODE: ViTMode = "scclip"
#: The project's own tiny CLIP, pretrained on the synthetic world and shipped inside the package.
TINY_CLIP_NAME = "mvpseg-tiny"

#: How the last ViT block runs for dense features (see :mod:`mvpseg.dense`).
ViTMode = Literal[
    "maskclip", "value", "qq", "csa", "naclip", "resclip", "scclip", "vanilla",
    "qk",  # ClearCLIP's released config: q-k attention, no residual, no MLP (qq is its paper's, and its figures')
]
VIT_MODES: tuple[str, ...] = get_args(ViTMode)


def check_vit_mode(mode: str) -> str:
    """``mode`` if it is one of :data:`VIT_MODES`, else a one-line ValueError naming them."""
    if mode not in VIT_MODES:
        raise ValueError(f"vit_mode must be one of {', '.join(VIT_MODES)}, not {mode!r}")
    return mode


#: Numeric precision: "auto" is fp32 on the CPU and bf16 (fp16 where bf16 is unsupported) autocast on CUDA.
Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)


def to_dict(config: Any) -> dict[str, Any]:
    """A config as plain JSON values (tuples become lists), nested configs included."""
    return json.loads(json.dumps(asdict(config)))


def from_dict(cls: type, values: dict[str, Any], what: str | None = None) -> Any:
    """Rebuild a config dataclass from :func:`to_dict`'s output, nested configs and tuples included.

    Args:
        cls: the config class.
        values: field values; nested configs as dicts.
        what: how to name the config in errors (default: the class name).

    Raises:
        ValueError: a field the class does not have (the message names it).
    """
    known = {item.name for item in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {what or cls.__name__} fields: {', '.join(unknown)}")
    hints = get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        if is_dataclass(hints[name]) and isinstance(value, dict):
            value = from_dict(hints[name], value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)
