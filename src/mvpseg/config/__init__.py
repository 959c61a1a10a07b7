"""Every setting of mvpseg, as plain dataclasses: the model, its losses, inference, training, the demo.

This package imports nothing heavy (no torch, no open_clip), so that the command line can build its
flags from these classes, and answer ``--help``, in a fraction of a second. Each field's trailing
comment is its documentation and the help text of its flag (see :mod:`mvpseg.cli.flags`): a new
field is a new flag with no second edit. The modules that use a config re-export it
(``mvpseg.model.MVPSegConfig``, ``mvpseg.train.TrainConfig``, ...). Its modules: :mod:`~mvpseg.config.base`
(defaults, modes, JSON), :mod:`~mvpseg.config.model`, :mod:`~mvpseg.config.inference`, :mod:`~mvpseg.config.runs`;
every name is imported from ``mvpseg.config`` itself.
"""


from .base import (
    DEFAULT_CLIP,
    PRECISIONS,
    TEMPLATE_CLIP,
    TEMPLATE_VIT_MODE,
    TINY_CLIP_NAME,
    VIT_MODES,
    Precision,
    ViTMode,
    check_vit_mode,
    from_dict,
    to_dict,
)
from .inference import (
    EVAL_PRESETS,
    STUDENT_EVAL_PRESETS,
    DenseOptions,
    InferenceConfig,
    TemplateSet,
    inference_made_for,
    with_overrides,
)
from .model import LossWeights, ModelSource, MVPSegConfig
from .runs import (
    DEMO_PRESETS,
    STUDENT_PRESETS,
    TRAIN_PRESETS,
    TRANSFER_PRESETS,
    DemoConfig,
    RunConfig,
    StudentConfig,
    TrainConfig,
    TransferConfig,
)

__all__ = [
    "DEFAULT_CLIP",
    "TEMPLATE_CLIP",
    "TEMPLATE_VIT_MODE",
    "TINY_CLIP_NAME",
    "VIT_MODES",
    "check_vit_mode",
    "PRECISIONS",
    "DemoConfig",
    "DenseOptions",
    "DEMO_PRESETS",
    "EVAL_PRESETS",
    "STUDENT_EVAL_PRESETS",
    "InferenceConfig",
    "ModelSource",
    "LossWeights",
    "MVPSegConfig",
    "RunConfig",
    "StudentConfig",
    "TrainConfig",
    "TransferConfig",
    "TRAIN_PRESETS",
    "TRANSFER_PRESETS",
    "STUDENT_PRESETS",
    "from_dict",
    "inference_made_for",
    "to_dict",
    "with_overrides",
    "Precision",
    "TemplateSet",
    "ViTMode",
]
