"""mvpseg's file formats: prompt checkpoints and training states, each safetensors plus JSON metadata.

- A **prompt checkpoint** (``mvpseg-prompts``) holds only what MVP-SEG trains (the prompt contexts
  and the head's temperatures), the model configuration, and which CLIP it was learned on.
- A **student checkpoint** (``mvpseg-student``) holds an MVP-SEG+ student: its network, the frozen
  prompts it was taught with (so it answers any class names), its configuration, the CLIP whose text
  tower encodes the prompts, and which prompt checkpoint taught it.
- A **training state** (``mvpseg-train``) holds what ``--resume`` restores: the trained tensors, the
  optimiser's state, the step and the run's whole configuration.

Prompt and student checkpoints may also carry the inference settings their model was made for
(metadata "inference": the :class:`mvpseg.InferenceConfig` scale fields, :data:`INFERENCE_FIELDS`),
so that the page, ``mvpseg segment`` and ``Segmenter`` use them by default (flags still override);
:func:`set_inference_settings` adds them to an existing file.

Nothing is pickled. Files are written atomically (:func:`mvpseg.files.atomic_write`). Building models
from these files is :mod:`mvpseg.build`'s job.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save

from .config import InferenceConfig, to_dict
from .files import atomic_write
from .version import __version__

if TYPE_CHECKING:
    from .model import MVPSeg
    from .student import Student

__all__ = [
    "INFERENCE_FIELDS",
    "CheckpointError",
    "TrainingState",
    "clip_signature",
    "inference_settings",
    "is_weights_file",
    "load_training_state",
    "read_prompt_checkpoint",
    "read_student_checkpoint",
    "save_prompt_checkpoint",
    "save_student_checkpoint",
    "save_training_state",
    "set_inference_settings",
    "source_name",
]

PROMPTS_FORMAT, PROMPTS_VERSION = "mvpseg-prompts", 2
STUDENT_FORMAT, STUDENT_VERSION = "mvpseg-student", 1
TRAIN_FORMAT, TRAIN_VERSION = "mvpseg-train", 1
#: The :class:`mvpseg.InferenceConfig` fields a checkpoint records: the scale its model was made for.
INFERENCE_FIELDS = InferenceConfig.SCALE_FIELDS
#: How a CLIP loaded from the Hugging Face Hub records its source (``hf-hub:org/name[@revision]``, mvpseg.hf_clip).
HUB_PREFIX = "hf-hub:"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that does not fit the CLIP or the run it is paired with."""


def _write(path: str | os.PathLike[str], tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> Path:
    """Tensors and JSON metadata (under the key "mvpseg") to a safetensors file, atomically.

    The bytes go into atomic_write's own temporary file (``save_file`` of safetensors 0.8 would rename a
    ``0600`` file of its own over it)."""
    header = {"mvpseg": json.dumps({**metadata, "mvpseg_version": __version__})}
    data = save(tensors, metadata=header)
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def _read(path: str | os.PathLike[str], kind: str, fmt: str, version: int,
          with_tensors: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors (none unless ``with_tensors``: the header alone is read) and metadata of an mvpseg file of
    format ``fmt`` (up to ``version``), or one clear error."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{kind} not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get("mvpseg")
        tensors = load_file(str(path)) if with_tensors else {}
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path} is not an mvpseg {kind} (a safetensors file is expected)") from error
    if raw is None:
        raise CheckpointError(f"{path} is a safetensors file without mvpseg metadata: not an mvpseg {kind}")
    metadata = json.loads(raw)
    if metadata.get("format") != fmt:
        raise CheckpointError(f"{path} is not an mvpseg {kind} (its format is {metadata.get('format')!r}, not {fmt!r})")
    if int(metadata.get("format_version", 0)) > version:
        raise CheckpointError(
            f"{path} has {fmt} format v{metadata.get('format_version')}; this mvpseg reads up to v{version}: "
            f"upgrade mvpseg"
        )
    return tensors, metadata


def clip_signature(clip_model: torch.nn.Module) -> dict[str, int]:
    """The sizes a prompt checkpoint needs from its CLIP's text tower: token width and embedding size."""
    clip: Any = clip_model  # open_clip's CLIP: its parts are attributes set at run time, untyped
    projection = clip.text_projection
    return {
        "token_width": int(clip.token_embedding.weight.shape[1]),
        "embed_dim": int(projection.out_features if isinstance(projection, torch.nn.Linear) else projection.shape[-1]),
    }


def inference_settings(values: Mapping[str, Any] | None) -> dict[str, Any]:
    """The inference settings among ``values`` (:data:`INFERENCE_FIELDS` only), e.g. a checkpoint's "inference"."""
    given = values or {}
    return {name: given[name] for name in INFERENCE_FIELDS if name in given}


def save_prompt_checkpoint(path: str | os.PathLike[str], model: MVPSeg, extra: dict[str, Any] | None = None,
                           inference: Mapping[str, Any] | None = None) -> Path:
    """Write the trained tensors of ``model``, its config and its CLIP's identity to a safetensors file, atomically.

    Args:
        path: destination, conventionally ``*.safetensors``.
        model: an MVP-SEG model with learned prompts.
        extra: more JSON-serialisable metadata (dataset, class names trained on, iterations...).
        inference: the inference settings the prompts were made for (InferenceConfig fields; only
            :data:`INFERENCE_FIELDS` are kept), the default of whoever segments with them.

    Returns:
        The path written.
    """
    if model.prompts is None:
        raise ValueError("the template baseline has nothing trained to save")
    metadata = {"format": PROMPTS_FORMAT, "format_version": PROMPTS_VERSION, "config": model.config.to_dict(),
                "clip": _clip_identity(model), "extra": extra or {}}
    if inference_settings(inference):
        metadata["inference"] = inference_settings(inference)
    return _write(path, _tensors(model), metadata)


def set_inference_settings(path: str | os.PathLike[str], settings: Mapping[str, Any]) -> Path:
    """Record in a prompt or student checkpoint the inference settings its model was made for, atomically.

    The tensors are kept as they are; only the metadata changes (no retraining).

    Args:
        path: a prompt or student checkpoint.
        settings: InferenceConfig fields (only :data:`INFERENCE_FIELDS` are kept; none: the record is removed).
    """
    path = Path(path)
    for fmt, version, kind in ((PROMPTS_FORMAT, PROMPTS_VERSION, "prompt checkpoint"),
                               (STUDENT_FORMAT, STUDENT_VERSION, "student checkpoint")):
        try:
            tensors, metadata = _read(path, kind, fmt, version)
            break
        except CheckpointError:
            if fmt == STUDENT_FORMAT:
                raise
    metadata.pop("mvpseg_version", None)
    metadata.pop("inference", None)
    if inference_settings(settings):
        metadata["inference"] = inference_settings(settings)
    return _write(path, tensors, metadata)


def _tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().float().cpu().contiguous() for name, tensor in model.state_dict().items()}


def _clip_identity(model: MVPSeg | Student) -> dict[str, Any]:
    """What a checkpoint records of its CLIP: architecture, weights' source and fingerprint, text tower sizes."""
    return {"name": model.clip.name, "pretrained": source_name(model.clip.pretrained),
            "fingerprint": model.clip.fingerprint, **clip_signature(model.clip_model)}


def is_weights_file(pretrained: str | None) -> bool:
    """Whether a CLIP weights source names a local file or folder (else it is an open_clip tag, "mvpseg", a Hub id
    ``hf-hub:org/name``, or None)."""
    return pretrained is not None and not pretrained.startswith(HUB_PREFIX) and (
        os.sep in pretrained or "/" in pretrained or bool(Path(pretrained).suffix))


def source_name(pretrained: str | None) -> str | None:
    """A CLIP weights source as stored: a tag or Hub id as it is, a file by its name only and a folder by its name
    and a slash (paths differ between machines)."""
    if not is_weights_file(pretrained):
        return pretrained
    path = Path(pretrained)  # type: ignore[arg-type]
    return f"{path.name}/" if path.is_dir() else path.name


def read_prompt_checkpoint(path: str | os.PathLike[str],
                           with_tensors: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a prompt checkpoint's tensors and metadata, with one clear error for a wrong file.

    Args:
        path: a file written by :func:`save_prompt_checkpoint` (format v1 files are read too).

    Returns:
        (tensors, metadata); metadata holds "config" (:class:`mvpseg.MVPSegConfig` fields), "clip"
        ("name", "pretrained": the weights' tag or file name, "fingerprint", "token_width", "embed_dim";
        files of mvpseg 0.1 lack the source and the fingerprint), "mvpseg_version", "extra" and, when
        recorded, "inference" (the settings the prompts were made for).
    """
    tensors, metadata = _read(path, "prompt checkpoint", PROMPTS_FORMAT, PROMPTS_VERSION, with_tensors)
    clip = dict(metadata.get("clip") or {})
    if "clip_name" in metadata.get("config", {}):  # format v1 kept the CLIP's name in the model config
        clip.setdefault("name", metadata["config"].pop("clip_name"))
    clip.setdefault("pretrained", None)
    clip.setdefault("fingerprint", None)
    metadata["clip"] = clip
    return tensors, metadata


def save_student_checkpoint(path: str | os.PathLike[str], student: Student, teacher: dict[str, Any],
                            extra: dict[str, Any] | None = None, inference: Mapping[str, Any] | None = None) -> Path:
    """Write an MVP-SEG+ student (network, frozen prompts, config, CLIP, teacher) to a safetensors file, atomically.

    Args:
        path: destination, conventionally ``*.safetensors``.
        student: the student.
        teacher: what taught it: {"prompts": file name, "config": the prompts' MVPSegConfig fields}.
        extra: more JSON-serialisable metadata (dataset, vocabulary, iterations...).
        inference: the inference settings it was made for (as :func:`save_prompt_checkpoint`).
    """
    metadata = {"format": STUDENT_FORMAT, "format_version": STUDENT_VERSION, "config": to_dict(student.config),
                "clip": _clip_identity(student), "teacher": teacher, "extra": extra or {}}
    if inference_settings(inference):
        metadata["inference"] = inference_settings(inference)
    return _write(path, _tensors(student), metadata)


def read_student_checkpoint(path: str | os.PathLike[str],
                            with_tensors: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a student checkpoint's tensors (none unless ``with_tensors``) and metadata ("config", "clip",
    "teacher", "extra", "mvpseg_version")."""
    return _read(path, "student checkpoint", STUDENT_FORMAT, STUDENT_VERSION, with_tensors)


@dataclass
class TrainingState:
    """What a training checkpoint restores. (No random generator state: every random choice of a run is
    a function of its seed and the step, see :mod:`mvpseg.runs`.)"""

    step: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    config: dict[str, Any]
    scaler: dict[str, Any] | None = None  # the fp16 gradient scaler's state, when the run has one


def save_training_state(path: str | os.PathLike[str], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        step: int, config: dict[str, Any], scaler: dict[str, Any] | None = None) -> Path:
    """Atomically write the trained tensors, the optimiser, the step and the run's config.

    Args:
        path: destination, conventionally ``OUT/checkpoint.safetensors``.
        model: the model being trained (its whole ``state_dict``).
        optimizer: its optimiser.
        step: steps done.
        config: the run's configuration as plain JSON values.
        scaler: the gradient scaler's ``state_dict()`` (fp16 on CUDA), or None.
    """
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    state = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    metadata = {"format": TRAIN_FORMAT, "format_version": TRAIN_VERSION, "step": step, "config": config,
                "optimizer_groups": state["param_groups"], "optimizer_scalars": scalars, "scaler": scaler}
    return _write(path, tensors, metadata)


def load_training_state(path: str | os.PathLike[str]) -> TrainingState:
    """Read a training checkpoint written by :func:`save_training_state`."""
    tensors, metadata = _read(path, "training checkpoint", TRAIN_FORMAT, TRAIN_VERSION)
    model = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    optimizer_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            optimizer_state.setdefault(int(index), {})[name] = value
    for index, values in metadata["optimizer_scalars"].items():
        optimizer_state.setdefault(int(index), {}).update(values)
    return TrainingState(step=int(metadata["step"]), model=model,
                         optimizer={"state": optimizer_state, "param_groups": metadata["optimizer_groups"]},
                         config=metadata["config"], scaler=metadata.get("scaler"))
