"""Building models from their parts and from files: the one place that knows the parts' sizes.

:func:`build_mvpseg` puts MVP-SEG together around a loaded CLIP; :func:`load_mvpseg` rebuilds it
from a prompt checkpoint (:mod:`mvpseg.checkpoint`); :func:`from_pretrained` loads the CLIP a
checkpoint names as well.
"""

from __future__ import annotations

import os

import torch

from .checkpoint import CheckpointError, clip_signature, read_prompt_checkpoint
from .clip import ClipBundle, load_clip
from .config import DEFAULT_CLIP, MVPSegConfig
from .model import MVPHead, MVPSeg
from .prompts import PromptLearner

__all__ = ["build_mvpseg", "from_pretrained", "load_mvpseg"]


def build_mvpseg(clip: ClipBundle, config: MVPSegConfig | None = None,
                 generator: torch.Generator | None = None) -> MVPSeg:
    """Build MVP-SEG around a loaded CLIP.

    Args:
        clip: the frozen CLIP from :func:`mvpseg.load_clip`.
        config: the model configuration; None builds MaskCLIP's template baseline (no prompts,
            no GPR, CLIP's own logit scale).
        generator: random generator for the prompt initialisation.

    Returns:
        An :class:`MVPSeg` whose only parameters are the prompts and the head's temperatures.
    """
    logit_scale = float(clip.model.logit_scale.exp().mean())
    if config is None:
        baseline = MVPSegConfig(num_prompts=1, use_gpr=False, learn_temperatures=False)
        head = MVPHead(has_global=False, use_gpr=False, tau1=logit_scale, learnable=False)
        return MVPSeg(clip, prompts=None, head=head, config=baseline)
    prompts = PromptLearner(
        clip.model,
        clip.tokenizer,
        num_prompts=config.num_prompts,
        num_context=config.num_context,
        init_text=config.init_text,
        generator=generator,
    )
    head = MVPHead(
        has_global=True,
        use_gpr=config.use_gpr,
        tau1=config.tau1_init if config.tau1_init is not None else logit_scale / config.num_prompts,
        tau2=config.tau2_init,
        gamma=config.gpr_gamma,
        gpr_bias=config.gpr_bias,
        learnable=config.learn_temperatures,
    )
    return MVPSeg(clip, prompts=prompts, head=head, config=config).to(clip.model.token_embedding.weight.device)


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
    learned_on = metadata["clip"].get("name")
    if learned_on is not None and learned_on != clip.name:
        raise CheckpointError(
            f"{path} holds prompts learned on CLIP {learned_on!r}, but the CLIP loaded is {clip.name!r}: "
            f"use --clip {learned_on} (with its weights)"
        )
    signature = clip_signature(clip.model)
    saved = {key: metadata["clip"][key] for key in signature if key in metadata["clip"]}
    if saved and saved != signature:
        raise CheckpointError(
            f"{path} was made for a CLIP text tower with {saved} but the loaded "
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


def from_pretrained(
    clip: str | None = None,
    pretrained: str | os.PathLike[str] | None = "openai",
    prompts: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
) -> MVPSeg:
    """Load a CLIP and, optionally, learned prompts: the model behind ``mvpseg segment`` and ``eval``.

    Args:
        clip: open_clip architecture; default the checkpoint's, else :data:`mvpseg.config.DEFAULT_CLIP`.
        pretrained: open_clip tag, local weights file, or None for random weights.
        prompts: a prompt checkpoint; None uses MaskCLIP's 85 templates.
        device: where to load CLIP.

    Returns:
        The model, in eval mode.
    """
    if clip is None:
        clip = read_prompt_checkpoint(prompts)[1]["clip"].get("name") if prompts is not None else None
    bundle = load_clip(clip or DEFAULT_CLIP, pretrained, device=device)
    return load_mvpseg(prompts, bundle) if prompts is not None else build_mvpseg(bundle, None).eval()
