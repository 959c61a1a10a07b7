"""MVP-SEG: multi-view prompt learning for open-vocabulary semantic segmentation on a frozen CLIP.

The public API, in layers:

- :class:`Segmenter` / :class:`Prediction`: any image, any class names, NumPy out.
- :class:`MVPSeg` with :class:`PromptLearner` and :class:`MVPHead`: the model on tensors;
  :func:`build_mvpseg` and :func:`load_mvpseg` make one.
- :func:`dense_features`, :func:`load_clip`: MaskCLIP-style dense CLIP features from open_clip.

Names are imported on first use, so ``import mvpseg`` (and the ``mvpseg`` command's ``--help``)
costs nothing until a model is needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .version import __version__

if TYPE_CHECKING:
    from . import losses
    from .build import build_mvpseg, load_mvpseg
    from .checkpoint import CheckpointError, save_prompt_checkpoint
    from .clip import ClipBundle, ClipWeightsUnavailable, load_clip
    from .config import InferenceConfig, ModelSource, MVPSegConfig
    from .dense import dense_features
    from .image import load_image
    from .inference import Segmenter
    from .model import MVPHead, MVPSeg, MVPSegOutput
    from .prediction import Prediction
    from .prompts import TEMPLATES, PromptLearner, template_embeddings

#: Public name -> the module that defines it.
_EXPORTS = {
    "CheckpointError": "checkpoint",
    "ClipBundle": "clip",
    "ClipWeightsUnavailable": "clip",
    "InferenceConfig": "config",
    "MVPHead": "model",
    "MVPSeg": "model",
    "MVPSegConfig": "config",
    "MVPSegOutput": "model",
    "ModelSource": "config",
    "Prediction": "prediction",
    "PromptLearner": "prompts",
    "Segmenter": "inference",
    "TEMPLATES": "prompts",
    "build_mvpseg": "build",
    "dense_features": "dense",
    "load_clip": "clip",
    "load_image": "image",
    "load_mvpseg": "build",
    "save_prompt_checkpoint": "checkpoint",
    "template_embeddings": "prompts",
}

__all__ = [
    "CheckpointError",
    "ClipBundle",
    "ClipWeightsUnavailable",
    "InferenceConfig",
    "MVPHead",
    "MVPSeg",
    "MVPSegConfig",
    "MVPSegOutput",
    "ModelSource",
    "Prediction",
    "PromptLearner",
    "Segmenter",
    "TEMPLATES",
    "__version__",
    "build_mvpseg",
    "dense_features",
    "load_clip",
    "load_image",
    "load_mvpseg",
    "losses",
    "save_prompt_checkpoint",
    "template_embeddings",
]


def __getattr__(name: str) -> Any:
    if name == "losses":
        return importlib.import_module(".losses", __name__)
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mvpseg' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
