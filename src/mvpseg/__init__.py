"""MVP-SEG: multi-view prompt learning for open-vocabulary semantic segmentation on a frozen CLIP.

The public API, in layers:

- :class:`Segmenter` / :class:`Prediction`: any image, any class names, NumPy out.
- :class:`MVPSeg` with :class:`PromptLearner` and :class:`MVPHead`: the model on tensors.
- :func:`dense_features`, :func:`load_clip`: MaskCLIP-style dense CLIP features from open_clip.
"""

__version__ = "0.1.0"

from . import losses
from .checkpoint import CheckpointError, build_mvpseg, load_mvpseg, save_prompt_checkpoint
from .clip import ClipBundle, ClipWeightsUnavailable, load_clip
from .dense import dense_features
from .image import load_image
from .inference import InferenceConfig, Prediction, Segmenter
from .model import MVPHead, MVPSeg, MVPSegConfig, MVPSegOutput
from .prompts import TEMPLATES, PromptLearner, template_embeddings

__all__ = [
    "CheckpointError",
    "ClipBundle",
    "ClipWeightsUnavailable",
    "InferenceConfig",
    "MVPHead",
    "MVPSeg",
    "MVPSegConfig",
    "MVPSegOutput",
    "Prediction",
    "PromptLearner",
    "Segmenter",
    "TEMPLATES",
    "build_mvpseg",
    "dense_features",
    "load_clip",
    "load_image",
    "load_mvpseg",
    "losses",
    "save_prompt_checkpoint",
    "template_embeddings",
]
