"""Building models from their parts and from files: the one place that knows the parts' sizes.

:func:`build_mvpseg` puts MVP-SEG together around a loaded CLIP; :func:`load_mvpseg` rebuilds it
from a prompt checkpoint (:mod:`mvpseg.checkpoint`); :func:`from_pretrained` loads the CLIP a
checkpoint names as well.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .checkpoint import (
    CheckpointError,
    clip_signature,
    inference_settings,
    is_weights_file,
    read_prompt_checkpoint,
    read_student_checkpoint,
)
from .clip import ClipBundle, ClipWeightsUnavailable, default_weights, load_clip
from .config import (
    DEFAULT_CLIP,
    TEMPLATE_CLIP,
    TEMPLATE_VIT_MODE,
    ModelSource,
    MVPSegConfig,
    StudentConfig,
    ViTMode,
    from_dict,
)
from .model import MVPHead, MVPSeg
from .prompts import PromptLearner

if TYPE_CHECKING:
    from .student import Student

__all__ = ["ClipWeightsWarning", "build_mvpseg", "build_student", "from_pretrained", "load_mvpseg", "load_student",
           "local_checkpoint"]


class ClipWeightsWarning(UserWarning):
    """Prompts loaded onto other weights of their CLIP architecture than those they were learned on."""


def build_mvpseg(clip: ClipBundle, config: MVPSegConfig | None = None,
                 generator: torch.Generator | None = None, vit_mode: ViTMode = "maskclip") -> MVPSeg:
    """Build MVP-SEG around a loaded CLIP.

    Args:
        clip: the frozen CLIP from :func:`mvpseg.load_clip`.
        config: the model configuration; None builds MaskCLIP's template baseline (no prompts,
            no GPR, CLIP's own logit scale).
        generator: random generator for the prompt initialisation.
        vit_mode: the template baseline's dense mode for ViT towers (:data:`mvpseg.config.VIT_MODES`);
            a ``config`` carries its own.

    Returns:
        An :class:`MVPSeg` whose only parameters are the prompts and the head's temperatures.
    """
    logit_scale = float(clip.model.logit_scale.exp().mean())
    if config is None:
        baseline = MVPSegConfig(num_prompts=1, use_gpr=False, learn_temperatures=False, vit_mode=vit_mode)
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


def load_mvpseg(path: str | os.PathLike[str], clip: ClipBundle, changes: Mapping[str, Any] | None = None) -> MVPSeg:
    """Rebuild MVP-SEG from a prompt checkpoint around a loaded CLIP, checking that they fit.

    Args:
        path: a prompt checkpoint.
        clip: the CLIP to pair it with; must be the architecture the prompts were learned on.
        changes: :class:`mvpseg.MVPSegConfig` fields laid over the checkpoint's config before the model is
            built (``{"vit_mode": "naclip"}``, ``{"use_gpr": False}``): the model's config records them.

    Returns:
        The model with the checkpoint's prompts and temperatures, in eval mode.

    Raises:
        CheckpointError: the file is not a prompt checkpoint, or was made for another CLIP.
    """
    tensors, metadata = read_prompt_checkpoint(path)
    config = MVPSegConfig.from_dict({**metadata["config"], **(changes or {})})
    _check_clip(path, metadata["clip"], clip)
    model = build_mvpseg(clip, config)  # the contexts are then overwritten with the file's
    _load_tensors(path, model, tensors)
    model.inference_settings = inference_settings(metadata.get("inference"))  # Segmenter's default scale
    return model.eval()


def _check_clip(path: str | os.PathLike[str], learned_on: dict[str, Any], clip: ClipBundle) -> None:
    """Refuse a checkpoint made for another CLIP architecture; warn when the weights differ."""
    name = learned_on.get("name")
    if name is not None and name != clip.name:
        raise CheckpointError(
            f"{path} holds prompts learned on CLIP {name!r}, but the CLIP loaded is {clip.name!r}: "
            f"use --clip {name} (with its weights)"
        )
    signature = clip_signature(clip.model)
    saved = {key: learned_on[key] for key in signature if key in learned_on}
    if saved and saved != signature:
        raise CheckpointError(
            f"{path} was made for a CLIP text tower with {saved} but the loaded "
            f"{clip.name!r} has {signature}: the prompts do not fit this CLIP"
        )
    _check_weights(path, learned_on, clip)


def _load_tensors(path: str | os.PathLike[str], model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """The file's tensors into the model its config describes, or one sentence saying they do not fit."""
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except RuntimeError as error:  # a tensor of another shape
        raise CheckpointError(f"{path} does not match the model its config describes ({str(error).splitlines()[-1].strip()})") from error
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not match the model its config describes "
            f"(missing: {', '.join(missing[:5]) or '-'}; unexpected: {', '.join(unexpected[:5]) or '-'})"
        )


def _check_weights(path: str | os.PathLike[str], learned_on: dict[str, Any], clip: ClipBundle) -> None:
    """Warn (one line) when the loaded CLIP's weights are not those the prompts were learned on."""
    expected = learned_on.get("fingerprint")
    if expected is None or expected == clip.fingerprint:
        return
    source = learned_on.get("pretrained") or "random weights"
    warnings.warn(
        f"{Path(path).name} was learned on {learned_on.get('name')} weights from {source!r}, but the CLIP loaded "
        f"has other weights ({clip.pretrained or 'random'}): its prompts may not fit them",
        ClipWeightsWarning, stacklevel=3,
    )


def build_student(teacher: MVPSeg, config: StudentConfig, background: bool = False) -> Student:
    """Build an MVP-SEG+ student around a teacher's CLIP and prompts (random decoder, backbone as configured).

    Args:
        teacher: the trained MVP-SEG whose prompts the student keeps (copied, frozen).
        config: the student's architecture.
        background: learn an embedding for the class named "background".

    Returns:
        A :class:`mvpseg.student.Student` on the teacher's device, its frozen parts frozen. Its random parts
        draw from torch's global generator: seed it (or fork it) for a reproducible student. Its config
        records a backbone weights file by its name alone (the weights are in the student).
    """
    from .backbones import IMAGENET_MEAN, IMAGENET_STD, build_backbone
    from .student import Student, build_decoder

    if teacher.prompts is None:
        raise ValueError("the template baseline has no prompts to teach a student: train prompts first")
    clip = teacher.clip
    embed_dim = clip_signature(clip.model)["embed_dim"]
    backbone = build_backbone(config.backbone, config.output_stride, config.backbone_weights, clip.model.visual)
    maskclip = config.head == "maskclip"
    width = config.head_channels or (embed_dim if maskclip else 256)
    decoder = build_decoder(config.arch, config.head, backbone.channels, width, embed_dim, config.output_stride)
    learned = teacher.prompts
    prompts = PromptLearner(clip.model, clip.tokenizer, num_prompts=learned.num_prompts,
                            num_context=learned.num_context, generator=torch.Generator())
    prompts.load_state_dict(learned.state_dict())
    # MaskCLIP+ scores by the plain product with the text embedding: over K prompts, 1/K times the summed maps.
    tau1 = 1.0 / learned.num_prompts if maskclip else float(teacher.head.tau1.detach())
    head = MVPHead(has_global=True, use_gpr=False, tau1=tau1, learnable=not maskclip)
    head.log_tau2.requires_grad_(False)  # GPR's parts: unused by the student, never trained
    head.gpr_offset.requires_grad_(False)
    embedding = nn.Parameter(torch.randn(embed_dim)) if background else None
    weights = Path(config.backbone_weights).name if config.backbone_weights else config.backbone_weights
    normalisation = None if config.backbone == "clip" else (IMAGENET_MEAN, IMAGENET_STD)
    student = Student(clip, prompts, backbone, decoder, head,
                      dataclasses.replace(config, background=background, backbone_weights=weights), embedding,
                      normalisation=normalisation)
    return student.to(clip.model.token_embedding.weight.device)


def load_student(path: str | os.PathLike[str], clip: ClipBundle) -> Student:
    """Rebuild an MVP-SEG+ student from its checkpoint around a loaded CLIP, checking that they fit.

    Raises:
        CheckpointError: the file is not a student checkpoint, or was made for another CLIP.
    """
    tensors, metadata = read_student_checkpoint(path)
    _check_clip(path, metadata["clip"], clip)
    # Students of mvpseg 0.x have no "head" (theirs was mvpseg's); the weights come from the checkpoint.
    config = from_dict(StudentConfig, {"head": "mvpseg", **metadata["config"], "backbone_weights": None},
                       "student config")
    contexts = tensors.get("prompts.contexts")
    if contexts is None:
        raise CheckpointError(f"{path} holds no prompts: not a complete student checkpoint")
    teacher_config = MVPSegConfig(num_prompts=contexts.shape[0] - 1, num_context=contexts.shape[1], use_gpr=False)
    teacher = build_mvpseg(clip, teacher_config, generator=torch.Generator())
    student = build_student(teacher, config, background=bool(config.background))
    _load_tensors(path, student, tensors)
    student.inference_settings = inference_settings(metadata.get("inference"))  # Segmenter's default scale
    return student.eval()


def checkpoint_clip(path: str | os.PathLike[str], kind: str = "prompts") -> tuple[str | None, str | None]:
    """The CLIP a prompt (or student) checkpoint was made with: (architecture, weights' tag or file name)."""
    reader = read_student_checkpoint if kind == "student" else read_prompt_checkpoint
    learned_on = reader(path, with_tensors=False)[1]["clip"]  # the header only: a student's weights are large
    return learned_on.get("name"), learned_on.get("pretrained")


def local_checkpoint(source: str | os.PathLike[str] | None, kind: str) -> str | os.PathLike[str] | None:
    """A checkpoint source as a local file: an existing file as it is; a model folder or a Hub id through
    :func:`mvpseg.hub.resolve` (the Hub's cache). Whatever reads or fingerprints a checkpoint goes through it."""
    if source is None or Path(source).is_file():
        return source
    from .hub import resolve  # a leaf, imported only for folders and Hub ids

    return resolve(source, kind)


def from_pretrained(
    clip: str | None = None,
    pretrained: str | os.PathLike[str] | None = "auto",
    prompts: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    student: str | os.PathLike[str] | None = None,
    vit_mode: ViTMode | None = None,
) -> MVPSeg | Student:
    """Load a CLIP and, optionally, learned prompts or a student: the model behind ``mvpseg segment`` and ``eval``.

    Args:
        clip: open_clip architecture; default the checkpoint's, else (MaskCLIP's templates)
            :data:`mvpseg.config.TEMPLATE_CLIP`, ViT-B-16.
        pretrained: open_clip tag, local weights file, or None for random weights; "auto": the weights
            the checkpoint was learned on (a tag, or the shipped tiny CLIP's "mvpseg"), else the name's own
            (:func:`mvpseg.clip.default_weights`: "mvpseg" for the shipped tiny CLIPs, else "openai").
        prompts: a prompt checkpoint: a file, a model folder, or a Hugging Face Hub id (``org/name[@revision]``,
            :mod:`mvpseg.hub`); None uses MaskCLIP's 85 templates.
        device: where to load CLIP.
        student: an MVP-SEG+ student checkpoint (file, folder or Hub id) instead of prompts (it holds its prompts).
        vit_mode: how a ViT's last block gives dense features (:data:`mvpseg.config.VIT_MODES`); default
            the prompt checkpoint's, else (templates) :data:`mvpseg.config.TEMPLATE_VIT_MODE`, SC-CLIP's.
            ResNet towers ignore it; a student has no use for it.

    Returns:
        The model, in eval mode.

    Raises:
        ClipWeightsUnavailable: "auto" for a checkpoint learned on weights from a local file, which
            must be given (the message names it).
    """
    # ModelSource's checks (prompts or a student, a mode for prompts and templates only): one rule
    ModelSource(prompts=None if prompts is None else os.fspath(prompts),
                student=None if student is None else os.fspath(student), vit_mode=vit_mode)
    prompts, student = local_checkpoint(prompts, "prompts"), local_checkpoint(student, "student")
    source_file = student if student is not None else prompts
    learned_name, learned_source = (checkpoint_clip(source_file, "student" if student is not None else "prompts")
                                    if source_file is not None else (None, None))
    name = clip or learned_name or (DEFAULT_CLIP if source_file is not None else TEMPLATE_CLIP)
    if pretrained == "auto":
        if name != learned_name or learned_source is None:
            pretrained = default_weights(name)
        elif is_weights_file(learned_source):
            raise ClipWeightsUnavailable(
                f"{Path(source_file).name} was made with {name} weights from the file {learned_source!r}: "  # type: ignore[arg-type]
                f"pass that file with --clip-weights PATH (Python: pretrained=PATH)"
            )
        else:
            pretrained = learned_source
    bundle = load_clip(name, pretrained, device=device)
    if student is not None:
        return load_student(student, bundle)
    if prompts is None:
        return build_mvpseg(bundle, None, vit_mode=vit_mode or TEMPLATE_VIT_MODE).eval()
    # the user's choice of mode over the one the prompts were learned with
    return load_mvpseg(prompts, bundle, None if vit_mode is None else {"vit_mode": vit_mode})
