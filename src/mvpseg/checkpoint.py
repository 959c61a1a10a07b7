"""Building MVP-SEG from its parts, and prompt checkpoints: safetensors plus JSON metadata.

A prompt checkpoint holds only what MVP-SEG trains (the prompt contexts and the head's
temperatures) and the configuration that rebuilds the model around a CLIP. Nothing is pickled.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from . import __version__
from .clip import ClipBundle
from .model import MVPHead, MVPSeg, MVPSegConfig
from .prompts import PromptLearner

__all__ = [
    "CheckpointError",
    "atomic_write",
    "build_mvpseg",
    "load_mvpseg",
    "read_prompt_checkpoint",
    "save_prompt_checkpoint",
]

FORMAT = "mvpseg-prompts"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that does not fit the CLIP it is paired with."""


def build_mvpseg(clip: ClipBundle, config: MVPSegConfig | None = None,
                 generator: torch.Generator | None = None) -> MVPSeg:
    """Build MVP-SEG around a loaded CLIP; the one place that knows the parts' sizes.

    Args:
        clip: the frozen CLIP from :func:`mvpseg.load_clip`.
        config: the model configuration; None builds MaskCLIP's template baseline (no prompts,
            no GPR, CLIP's own logit scale).
        generator: random generator for the prompt initialisation.

    Returns:
        An :class:`MVPSeg` whose only parameters are the prompts and the head's temperatures.
    """
    model = clip.model
    logit_scale = float(model.logit_scale.exp().mean())
    if config is None:
        baseline = MVPSegConfig(clip_name=clip.name, num_prompts=1, use_gpr=False, learn_temperatures=False)
        head = MVPHead(has_global=False, use_gpr=False, tau1=logit_scale, learnable=False)
        return MVPSeg(model, clip.tokenizer, prompts=None, head=head, config=baseline)
    prompts = PromptLearner(
        model,
        clip.tokenizer,
        num_prompts=config.num_prompts,
        num_context=config.num_context if config.init_text is None else None,
        init_text=config.init_text,
        generator=generator,
    )
    config.num_context = prompts.num_context
    head = MVPHead(
        has_global=True,
        use_gpr=config.use_gpr,
        tau1=config.tau1_init if config.tau1_init is not None else logit_scale / config.num_prompts,
        tau2=config.tau2_init,
        gamma=config.gpr_gamma,
        gpr_bias=config.gpr_bias,
        learnable=config.learn_temperatures,
    )
    return MVPSeg(model, clip.tokenizer, prompts=prompts, head=head, config=config).to(
        model.token_embedding.weight.device
    )


def atomic_write(path: str | os.PathLike[str], write: Any) -> Path:
    """Call ``write(tmp_path)`` then rename the finished file onto ``path``: never a half-written file.

    Args:
        path: the final file.
        write: a callable taking the temporary path (same folder, so the rename is atomic).

    Returns:
        The final path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _clip_signature(clip_model: torch.nn.Module) -> dict[str, int]:
    return {
        "token_width": int(clip_model.token_embedding.weight.shape[1]),
        "embed_dim": int(clip_model.text_projection.shape[-1]
                         if not isinstance(clip_model.text_projection, torch.nn.Linear)
                         else clip_model.text_projection.out_features),
    }


def save_prompt_checkpoint(path: str | os.PathLike[str], model: MVPSeg,
                           extra: dict[str, Any] | None = None) -> Path:
    """Write the trained tensors of ``model`` and its config to a safetensors file, atomically.

    Args:
        path: destination, conventionally ``*.safetensors``.
        model: an MVP-SEG model with learned prompts.
        extra: more JSON-serialisable metadata (dataset, class names trained on, iterations...).

    Returns:
        The path written.
    """
    if model.prompts is None:
        raise ValueError("the template baseline has nothing trained to save")
    tensors = {name: tensor.detach().float().cpu().contiguous() for name, tensor in model.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "mvpseg_version": __version__,
        "config": model.config.to_dict(),
        "clip": _clip_signature(model.clip_model),
        "extra": extra or {},
    }
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"mvpseg": json.dumps(metadata)}))


def read_prompt_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a prompt checkpoint's tensors and metadata, with one clear error for a wrong file.

    Args:
        path: a file written by :func:`save_prompt_checkpoint`.

    Returns:
        (tensors, metadata) where metadata holds "config", "clip", "mvpseg_version" and "extra".
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"prompt checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get("mvpseg")
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path} is not an mvpseg prompt checkpoint (a safetensors file is expected)") from error
    if raw is None:
        raise CheckpointError(f"{path} is a safetensors file without mvpseg metadata: not an mvpseg prompt checkpoint")
    metadata = json.loads(raw)
    if metadata.get("format") != FORMAT or int(metadata.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {metadata.get('format')!r} v{metadata.get('format_version')}; "
            f"this mvpseg reads {FORMAT!r} up to v{FORMAT_VERSION}: upgrade mvpseg"
        )
    return tensors, metadata


def load_mvpseg(path: str | os.PathLike[str], clip: ClipBundle) -> MVPSeg:
    """Rebuild MVP-SEG from a prompt checkpoint around a loaded CLIP, checking that they fit.

    Args:
        path: a prompt checkpoint.
        clip: the CLIP to pair it with; must be the architecture the prompts were learned on.

    Returns:
        The model with the checkpoint's prompts and temperatures, in eval mode.

    Raises:
        CheckpointError: the file is not a prompt checkpoint, or was made for another CLIP.
    """
    tensors, metadata = read_prompt_checkpoint(path)
    config = MVPSegConfig.from_dict(metadata["config"])
    if config.clip_name != clip.name:
        raise CheckpointError(
            f"{path} holds prompts learned on CLIP {config.clip_name!r}, but the CLIP loaded is {clip.name!r}: "
            f"use --clip {config.clip_name} (with its weights)"
        )
    signature = _clip_signature(clip.model)
    if metadata.get("clip", signature) != signature:
        raise CheckpointError(
            f"{path} was made for a CLIP text tower with {metadata['clip']} but the loaded "
            f"{clip.name!r} has {signature}: the prompts do not fit this CLIP"
        )
    model = build_mvpseg(clip, config)  # the contexts are then overwritten with the file's
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not match the model its config describes "
            f"(missing: {', '.join(missing) or '-'}; unexpected: {', '.join(unexpected) or '-'})"
        )
    return model.eval()
