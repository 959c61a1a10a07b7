"""Every setting of mvpseg, as plain dataclasses: the model, its losses, inference, training, the demo.

This module imports nothing heavy (no torch, no open_clip), so that the command line can build its
flags from these classes, and answer ``--help``, in a fraction of a second. Each field's trailing
comment is its documentation and the help text of its flag (see :mod:`mvpseg.cli.flags`): a new
field is a new flag with no second edit. The modules that use a config re-export it
(``mvpseg.model.MVPSegConfig``, ``mvpseg.train.TrainConfig``, ...).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, ClassVar, Literal, get_args, get_type_hints

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
]

#: The CLIP used when none is named (and no checkpoint names one).
DEFAULT_CLIP = "RN50"
#: The CLIP and ViT mode of zero-training segmentation (no prompts, no student): the first of mvpseg's
#: dense modes in published tables, SC-CLIP on ViT-B/16 (docs/modes.md).
TEMPLATE_CLIP = "ViT-B-16"
TEMPLATE_VIT_MODE: ViTMode = "scclip"
#: The project's own tiny CLIP, pretrained on the synthetic world and shipped inside the package.
TINY_CLIP_NAME = "mvpseg-tiny"

#: How the last ViT block runs for dense features (see :mod:`mvpseg.dense`).
ViTMode = Literal["maskclip", "value", "qq", "csa", "naclip", "resclip", "scclip", "vanilla"]
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


@dataclass
class MVPSegConfig:
    """Everything that defines an MVP-SEG model besides CLIP and its weights. Stored in prompt checkpoints."""

    num_prompts: int = 3  # K segmentation prompts (paper: best at K = 3); a global prompt comes on top
    num_context: int | None = None  # M context vectors per prompt; default 16 (CoOp), or the phrase's length with init_text
    init_text: str | None = None  # phrase initialising every prompt, e.g. "a photo of a"; default N(0, 0.02)
    use_gpr: bool = True  # Global Prompt Refining: multiply the fused map by image-level class scores g
    gpr_gamma: float = 30.0  # sharpness of GPR's spatial softmax pooling (0: average, large: max)
    gpr_bias: bool = True  # a learned offset b in g = sigmoid((s - b) / tau2); off: the paper's formula
    tau1_init: float | None = None  # initial fusion scale tau1; default CLIP's logit scale / K
    tau2_init: float = 0.07  # initial GPR temperature tau2 (CLIP's initial temperature)
    learn_temperatures: bool = True  # train tau1 and tau2 (log-parametrised) along with the prompts
    vit_mode: ViTMode = "maskclip"  # last ViT block for dense features: maskclip, value, qq (ClearCLIP), csa (SCLIP), naclip, resclip, scclip, or vanilla (untouched: the baseline)

    def __post_init__(self) -> None:
        if self.num_prompts < 1:
            raise ValueError(f"num_prompts must be at least 1, got {self.num_prompts}")
        if self.num_context is not None and self.num_context < 1:
            raise ValueError(f"num_context must be at least 1, got {self.num_context}")
        check_vit_mode(self.vit_mode)
        if self.tau2_init <= 0 or (self.tau1_init is not None and self.tau1_init <= 0):
            raise ValueError("temperatures must be positive")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MVPSegConfig:
        values = {key: value for key, value in values.items() if key != "clip_name"}  # v1 files: now in "clip"
        return from_dict(cls, values, "MVP-SEG config")


@dataclass
class LossWeights:
    """``L = seg * L_seg + cls * L_cls + oc * L_OC`` (paper: weights not given; default 1, 1, 1).

    Beyond the paper, off by default: ``views * L_views + overlap * L_overlap`` (:mod:`mvpseg.losses`).
    """

    seg: float = 1.0  # weight of L_seg, the pixel cross-entropy of the final map
    cls: float = 1.0  # weight of L_cls, GPR's image-level presence loss (0 turns it off)
    oc: float = 1.0  # weight of L_OC, the Orthogonal Constraint Loss between prompts (0 turns it off)
    views: float = 0.0  # beyond the paper: weight of L_views, each thing's cells assigned to the K prompts by a Sinkhorn plan (0: off, the paper)
    views_epsilon: float = 0.01  # entropic regularisation of the view assignment's Sinkhorn plan on the prompts' cosines (ProtoSeg: 0.05; keep 1/epsilon above K tau1, docs/method.md)
    views_iterations: int = 3  # Sinkhorn iterations of the view assignment (ProtoSeg: 3)
    overlap: float = 0.0  # beyond the paper: weight of the map-overlap penalty, the weighted cosine between the prompts' centred maps inside each thing (0: off)
    views_classes: tuple[str, ...] = ()  # class names L_views and the overlap penalty are taken over (empty: every labelled class)


@dataclass
class ModelSource:
    """Which model segments: a CLIP, with MaskCLIP's templates, learned prompts, a student or an ONNX file.

    Every command that segments takes one (its fields are flags: ``--clip``, ``--prompts``, ...), and so do
    :meth:`mvpseg.Segmenter.from_source` and the Ray ``SegmentBatch``: one source gives one model everywhere.
    """

    clip: str | None = None  # open_clip architecture (RN50, ViT-B-16, ... or the shipped tiny CLIPs mvpseg-tiny, mvpseg-tiny-parts, mvpseg-tiny-parts-vit); default the checkpoint's, else ViT-B-16 (templates)
    pretrained: str | None = "auto"  # CLIP weights: an open_clip tag (openai, laion2b_s34b_b88k, ...), a local weights file, a transformers CLIPModel folder or Hub id, or none (random); auto: the checkpoint's when it names a tag, else the CLIP's own (mvpseg for the tiny CLIPs, else openai)
    prompts: str | None = None  # learned prompts: a .safetensors from mvpseg train, a model folder, or a Hugging Face Hub id org/name[@rev]; none: MaskCLIP's 85 templates
    student: str | None = None  # an MVP-SEG+ student (a .safetensors from mvpseg transfer, a model folder or a Hub id) instead of prompts
    onnx: str | None = None  # run the windows through this file of mvpseg export with onnxruntime (CPU); prompts or student then give its class embeddings (default: the checkpoint it was exported from)
    vit_mode: ViTMode | None = None  # how a ViT's last block gives dense features (docs/method.md); default the prompts' mode, else scclip (templates); ResNets ignore it

    def __post_init__(self) -> None:
        if self.prompts is not None and self.student is not None:
            raise ValueError("give prompts or a student, not both (a student holds the prompts it was taught with)")
        if self.vit_mode is not None:
            check_vit_mode(self.vit_mode)
            if self.student is not None:
                raise ValueError("a student segments with its own network: vit_mode is for prompts and templates")
            if self.onnx is not None:
                raise ValueError("an ONNX file runs the dense mode it was exported with (mvpseg export --vit-mode "
                                 "MODE)")
        if isinstance(self.pretrained, str) and self.pretrained.strip().lower() == "none":
            self.pretrained = None


@dataclass
class DenseOptions:
    """How a ViT's dense mode runs beyond its name: each mode's own parameters and the positional-embedding
    resize (:mod:`mvpseg.dense`). The defaults are mvpseg's; the peers' protocols set theirs per benchmark
    (:mod:`mvpseg.protocols`). ResNet towers ignore them."""

    position_resize: Literal["grid", "authors"] = "grid"  # positional embedding on another grid: grid (bicubic to exactly the patch grid) or authors (the peers' F.interpolate(scale_factor=(g + 0.1) / g0, bicubic))
    naclip_std: float = 5.0  # naclip, resclip: the neighbourhood Gaussian's standard deviation, in patches
    resclip_lambda: float = 0.4  # resclip: weight of the middle blocks' attention (its Context and COCO-Stuff value)
    resclip_tau: float = 2.0  # resclip: scale of the attention

    def __post_init__(self) -> None:
        if self.position_resize not in ("grid", "authors"):
            raise ValueError(f"position_resize must be grid or authors, not {self.position_resize!r}")
        if self.naclip_std <= 0:
            raise ValueError(f"naclip_std must be positive, not {self.naclip_std}")
        if not 0.0 <= self.resclip_lambda <= 1.0:
            raise ValueError(f"resclip_lambda must be in [0, 1], not {self.resclip_lambda}")


#: Text templates of the zero-training classifier: MaskCLIP's 85 (mvpseg's default) or OpenAI's 80 ImageNet ones
#: (the peers').
TemplateSet = Literal["maskclip-85", "openai-imagenet-80"]


@dataclass
class InferenceConfig:
    """How images are fed to the model at inference, and how its scores become labels."""

    short_side: int | None = 512  # resize so the short side has this length; 0 or none keeps the size
    long_side: int | None = None  # resize so the long side has this length (mmseg's img_scale=(L, L) with keep_ratio); overrides short_side
    mode: Literal["slide", "whole"] = "slide"  # slide: overlapping crop windows (ZegCLIP); whole: the image at once (MaskCLIP)
    crop_size: int = 512  # sliding-window side (rounded down to a multiple of the feature stride: window_on_cells)
    stride: int | None = None  # sliding-window step (not the feature stride), at most the crop (rounded to the nearest multiple of the feature stride); default 426/512 of the crop (ZegCLIP's 426 for 512)
    batch_size: int = 4  # windows per forward pass
    precision: Precision = "auto"  # auto: fp32 on the CPU, bf16 (else fp16) autocast on CUDA; or fp32, bf16, fp16
    upsample_budget_mib: float = 64.0  # memory of the blocks of upsampled class scores (bounds memory on huge images)
    upsample_rows: int | None = None  # output rows per upsampling block; default: as many as the budget allows
    text_batch: int = 32  # classes encoded by the text tower at once (bounds memory for large vocabularies)
    fold_batchnorm: bool = True  # ResNet towers: a copy with the frozen BatchNorms folded into the convolutions
    channels_last: bool = True  # ResNet towers: NHWC convolutions (faster with oneDNN and cuDNN)
    # The peers' protocols (mvpseg.protocols sets these per benchmark; the defaults are mvpseg's own protocol).
    resize_cap: int | None = None  # with short_side: mmcv's keep-ratio rescale to (cap, short_side), the factor min(cap / long side, short_side / short side), sizes rounded half up (the peers' Resize(scale=(2048, S), keep_ratio=True)); none: the short side alone
    antialias: bool = True  # resize with antialiasing (mvpseg); off: plain bilinear, the image rounded to 8 bits as mmcv's cv2 resize leaves it (the peers)
    stitch: Literal["cells", "pixels"] = "cells"  # cells: windows averaged on the feature grid, scores upsampled once (mvpseg); pixels: each window's cosines upsampled to its pixels, averaged over overlaps, then upsampled to the image's own size (the peers' forward_slide)
    templates: TemplateSet = "maskclip-85"  # the template classifier's texts: maskclip-85 (MaskCLIP's) or openai-imagenet-80 (the peers'); learned prompts ignore it
    synonym_rule: Literal["max-logit", "softmax-max"] = "max-logit"  # a class's several names: max-logit (its best name's logit, mvpseg) or softmax-max (softmax over every name, then each class's best probability: the peers)
    logit_scale: float | None = None  # the template classifier's logit scale; none: CLIP's 100 (the peers: 40 to 65)
    area_thd: float = 0.0  # classes other than 0 whose argmax area is below this share of those classes' pixels are dropped (SCLIP's area_thd; 0: off)
    prob_thd: float = 0.0  # pixels whose best class probability is below this become class 0 (the peers' prob_thd; 0: off)
    pamr_steps: int = 0  # PAMR refinement steps on the upsampled scores (NACLIP's protocol: 10; 0: off)
    pamr_dilations: tuple[int, ...] = (8, 16)  # PAMR's dilations, in pixels
    dense: DenseOptions = field(default_factory=DenseOptions)

    def __post_init__(self) -> None:
        if isinstance(self.dense, dict):
            self.dense = from_dict(DenseOptions, self.dense, "dense options")
        if self.short_side == 0:
            self.short_side = None
        if self.long_side == 0:
            self.long_side = None
        if self.mode not in ("slide", "whole"):
            raise ValueError(f"mode must be 'slide' or 'whole', not {self.mode!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.short_side is not None and self.short_side < 1:
            raise ValueError("short_side must be positive")
        if self.long_side is not None and self.long_side < 1:
            raise ValueError("long_side must be positive")
        if self.crop_size < 1 or (self.stride is not None and self.stride < 1) or self.batch_size < 1:
            raise ValueError("crop_size, stride and batch_size must be positive")
        if self.stride is not None and self.stride > self.crop_size:
            raise ValueError(f"the window stride {self.stride} is larger than the crop {self.crop_size}: the windows "
                             f"would leave gaps; give a stride of at most the crop (--stride), or none for "
                             f"{self.default_stride(self.crop_size)}")
        if self.upsample_budget_mib <= 0 or (self.upsample_rows is not None and self.upsample_rows < 1):
            raise ValueError("upsample_budget_mib and upsample_rows must be positive")
        if self.text_batch < 1:
            raise ValueError("text_batch must be positive")
        if self.resize_cap is not None and self.resize_cap < 1:
            raise ValueError("resize_cap must be positive")
        if self.stitch not in ("cells", "pixels"):
            raise ValueError(f"stitch must be cells or pixels, not {self.stitch!r}")
        if self.templates not in get_args(TemplateSet):
            raise ValueError(f"templates must be one of {', '.join(get_args(TemplateSet))}, not {self.templates!r}")
        if self.synonym_rule not in ("max-logit", "softmax-max"):
            raise ValueError(f"synonym_rule must be max-logit or softmax-max, not {self.synonym_rule!r}")
        if self.logit_scale is not None and self.logit_scale <= 0:
            raise ValueError(f"logit_scale must be positive, not {self.logit_scale}")
        if not 0.0 <= self.area_thd < 1.0 or not 0.0 <= self.prob_thd <= 1.0:
            raise ValueError(f"area_thd must be in [0, 1) and prob_thd in [0, 1], not {self.area_thd} and {self.prob_thd}")
        if self.pamr_steps < 0:
            raise ValueError(f"pamr_steps must be 0 (off) or a positive number of steps, not {self.pamr_steps}")
        if self.pamr_steps and (not self.pamr_dilations or min(self.pamr_dilations) < 1):
            raise ValueError(f"pamr_dilations must be positive pixel counts, not {self.pamr_dilations}")

    #: The scale fields a checkpoint or an ONNX file records: the settings its model was made for.
    SCALE_FIELDS: ClassVar[tuple[str, ...]] = ("short_side", "long_side", "mode", "crop_size", "stride")
    #: Fields that change speed and memory only, never the labels: every other field is recorded with what
    #: it made (``made_with``) and tells ``--skip-existing`` to redo outputs made otherwise.
    SPEED_FIELDS: ClassVar[tuple[str, ...]] = ("batch_size", "upsample_budget_mib", "upsample_rows", "text_batch",
                                               "fold_batchnorm", "channels_last")

    @classmethod
    def result_fields(cls) -> tuple[str, ...]:
        """The fields that change what a segmentation gives: all but :attr:`SPEED_FIELDS`."""
        return tuple(f.name for f in fields(cls) if f.name not in cls.SPEED_FIELDS)

    @staticmethod
    def default_stride(crop_size: int) -> int:
        """The window step of a crop when none is given: ZegCLIP's ratio, 426 for 512 (83 %)."""
        return max(round(crop_size * 426 / 512), 1)

    @property
    def window_stride(self) -> int:
        """The sliding-window step in pixels: ``stride``, or :meth:`default_stride` of the crop."""
        return self.stride if self.stride is not None else self.default_stride(self.crop_size)

    def window_on_cells(self, feature_stride: int) -> tuple[int, int]:
        """The window's side and step in pixels on whole feature cells, the one rounding rule of inference and
        export: the side ``crop_size`` rounded down to a multiple of ``feature_stride`` (at least one cell), the
        step :attr:`window_stride` rounded to the nearest multiple (at least one cell, at most the side)."""
        crop = max(self.crop_size // feature_stride, 1) * feature_stride
        step = min(max(round(self.window_stride / feature_stride), 1) * feature_stride, crop)
        return crop, step


#: Evaluation settings per dataset (MaskCLIP+ / ZegCLIP): short side 512 (Context 520), sliding 512-px
#: windows with stride 426. Fields not named here take InferenceConfig's defaults.
EVAL_PRESETS: dict[str, dict[str, Any]] = {
    "voc": {"short_side": 512, "mode": "slide", "crop_size": 512, "stride": 426},
    "context": {"short_side": 520, "mode": "slide", "crop_size": 512, "stride": 426},
    "coco-stuff": {"short_side": 512, "mode": "slide", "crop_size": 512, "stride": 426},
    "custom": {"short_side": 512, "mode": "slide", "crop_size": 512, "stride": 426},
    # MaskCLIP+'s Context protocol (mmseg's pascal_context.py test pipeline): img_scale=(520, 520) with
    # keep_ratio, i.e. the long side scaled to exactly 520, and whole-image inference (test_cfg mode "whole").
    "context60": {"short_side": None, "long_side": 520, "mode": "whole", "crop_size": 512, "stride": 426},
}

#: Evaluation settings of an MVP-SEG+ student (``eval --student``), as MaskCLIP+ evaluates its students: the whole
#: image at mmseg's ``img_scale=(2048, 512)`` keeping the ratio (short side 512 unless the long side would pass
#: 2048), Context at ``img_scale=(520, 520)`` (long side 520).
STUDENT_EVAL_PRESETS: dict[str, dict[str, Any]] = {
    "voc": {"short_side": 512, "long_side": None, "mode": "whole"},
    "context": {"short_side": None, "long_side": 520, "mode": "whole"},
    "coco-stuff": {"short_side": 512, "long_side": None, "mode": "whole"},
    "custom": {"short_side": 512, "long_side": None, "mode": "whole"},
    "context60": {"short_side": None, "long_side": 520, "mode": "whole"},
}


def inference_made_for(dataset: str, scale: tuple[int, int], student: bool = False) -> dict[str, Any]:
    """The inference settings a run's model is made for, recorded in the checkpoint it writes: the dataset's
    evaluation preset (:data:`STUDENT_EVAL_PRESETS` for a student, else :data:`EVAL_PRESETS`; "custom" for
    a dataset without one) at the run's training scale, its short side ``min(scale)`` unless the preset sets
    the long side.

    Args:
        dataset: the dataset's canonical name (voc, context, coco-stuff, context60, custom).
        scale: the run's mmseg img_scale (long, short side).
        student: for a student checkpoint (MaskCLIP+ evaluates students on the whole image).
    """
    presets = STUDENT_EVAL_PRESETS if student else EVAL_PRESETS
    settings = {"short_side": 512, "long_side": None, **presets.get(dataset, presets["custom"])}
    if settings.get("long_side") is None:
        settings["short_side"] = min(scale)
    return settings


@dataclass
class RunConfig:
    """What every training run has: its data and augmentation, the CLIP, the optimiser and schedule, the run folder."""

    dataset: str = "voc"  # voc, context (59 classes), context60 (with background), coco-stuff, or custom (VOC-like layout with class_names.txt and unseen.txt)
    data_root: str = ""  # the dataset folder, in its usual layout (required)
    split: str = "train"  # training split (voc: with the SBD aug set when present)
    class_names_file: str | None = None  # replace the dataset's class names (one per line)
    unseen_file: str | None = None  # replace the unseen split (unseen class names, one per line)
    clip: str = DEFAULT_CLIP  # open_clip architecture (RN50, RN101, ViT-B-16, ... or mvpseg-tiny)
    pretrained: str | None = "auto"  # open_clip tag or local weights file; none: random weights; auto: the CLIP's own (mvpseg for the shipped tiny CLIPs, else openai)
    out: str = "runs/mvpseg"  # run folder: checkpoints, config and logs
    iters: int = 2000  # optimisation steps
    batch_size: int = 8  # global batch size, split evenly over processes
    lr: float = 2e-3  # learning rate
    optimizer: Literal["sgd", "adamw"] = "sgd"  # sgd (with momentum) or adamw
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 5e-4  # weight decay of the optimiser
    schedule: Literal["cosine", "poly", "constant"] = "cosine"  # learning-rate schedule (poly: power 0.9, as mmseg)
    warmup_iters: int = 0  # linear warm-up steps
    min_lr: float = 0.0  # the learning rate the poly and cosine schedules end at (mmseg's min_lr)
    crop_size: int = 512  # training crop side (mmseg's pipeline: rescale, crop, flip, photometric)
    scale: tuple[int, int] = (2048, 512)  # mmseg img_scale (long, short side) before the random ratio
    ratio_range: tuple[float, float] = (0.5, 2.0)  # random rescaling range of the augmentation
    cat_max_ratio: float = 0.75  # redraw a crop (10 tries) while one class covers this share of it
    photometric: bool = True  # photometric distortion (brightness, contrast, saturation, hue)
    seed: int = 0  # seeds the initialisation and every random choice of the data pipeline
    num_workers: int = 2  # data-loading processes per training process
    precision: Precision = "auto"  # auto: fp32 on the CPU, bf16 (else fp16) autocast on CUDA
    device: str | None = None  # cpu, cuda, cuda:1, ...; default cuda when available
    checkpoint_every: int = 500  # write the checkpoints every N steps
    log_every: int = 10  # a log.csv / TensorBoard row every N steps

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def recorded(self) -> dict[str, Any]:
        """The fields as a run records them (config.json, checkpoints): local weight files by their name alone."""
        return self.to_dict()

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Any:
        return from_dict(cls, values, f"{cls.__name__} (a run's config.json)")


@dataclass
class TrainConfig(RunConfig):
    """One prompt-training run (``mvpseg train``); every field is a flag, and a run's config.json holds them all."""

    lr: float = 2e-3  # learning rate (CoOp's for prompt contexts)
    optimizer: Literal["sgd", "adamw"] = "sgd"  # sgd (with momentum, as CoOp) or adamw
    model: MVPSegConfig = field(default_factory=MVPSegConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    transductive: bool = False  # show unseen class names too (their pixels stay unlabelled); off: inductive
    feature_cache: str | None = None  # train from cached dense features of augmented views, kept in this folder
    cache_views: int = 4  # augmented views per image in the feature cache (epoch e uses view e mod V)


#: Per-dataset presets of ``mvpseg train``. The paper gives no prompt-training schedule; ours follows
#: MaskCLIP+'s teacher phase lengths (VOC 2k, Context 4k, COCO-Stuff 8k iterations) and CoOp's
#: optimiser (SGD, lr 0.002, cosine). Context trains on 480 crops as MaskCLIP+ does.
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "voc": {"dataset": "voc", "iters": 2000, "crop_size": 512},
    "context": {"dataset": "context", "iters": 4000, "crop_size": 480, "scale": (2048, 520)},
    "coco-stuff": {"dataset": "coco-stuff", "iters": 8000, "crop_size": 512},
    # MaskCLIP+'s Context-60 training pipeline (mmseg's pascal_context.py): img_scale (520, 520), crop 480.
    "context60": {"dataset": "context60", "iters": 4000, "crop_size": 480, "scale": (520, 520)},
}


#: Per-world presets of ``mvpseg demo``: the parts world is drawn at 256 px and seen by its own tiny CLIP
#: (an 8x8 feature grid) at that one scale; its prompts train on random 128-px crops (the pixel loss at
#: 256 px costs 4x more) from two cached views per image, so that the demo stays within 15 minutes on a
#: 2-core CPU.
DEMO_PRESETS: dict[str, dict[str, Any]] = {
    "patterns": {"world": "patterns"},
    "parts": {"world": "parts", "clip": "mvpseg-tiny-parts", "crop_size": 128, "short_side": 256,
              "num_train": 1000, "cache_views": 2, "student_crop_size": 128, "student_iters": 300,
              "student_self_train_from": 200},
}


@dataclass
class DemoConfig:
    """``mvpseg demo``: the synthetic world, the shipped tiny CLIP, and the paper's ablation in miniature."""

    out: str = "demo-out"  # results, overlays, prompt maps and the generated world
    world: Literal["patterns", "parts"] = "patterns"  # patterns: 128-px patterned blobs; parts: 256-px things made of parts
    seed: int = 0  # seeds the world, the prompts and the data order
    num_train: int = 1200  # world training images (prompts see only their seen classes)
    num_val: int = 150  # world validation images (zero-shot evaluation)
    num_prompts: int = 3  # K of the multi-view rows
    num_context: int | None = None  # M context vectors per prompt; default the length of init_text
    init_text: str | None = "a photo of a"  # phrase initialising the prompts; none: N(0, 0.02)
    seeds: int = 3  # prompt-training seeds per learned row (seed, seed + 1, ...), averaged
    iters: int = 250  # training steps per learned row
    cache_views: int | None = None  # cached augmented views per training image (none: one per epoch)
    batch_size: int = 16  # training batch size
    lr: float = 0.01  # learning rate of the prompts
    optimizer: Literal["sgd", "adamw"] = "adamw"  # optimiser of the prompts
    crop_size: int = 128  # training crop (patterns: the whole 128-px image)
    short_side: int = 128  # the world's image size: the scale the tiny CLIP was pretrained at, for training and evaluation
    clip: str = TINY_CLIP_NAME  # the CLIP architecture
    clip_weights: str | None = "mvpseg"  # tiny CLIP weights: mvpseg (the shipped ones), a file, or none (random)
    vit_mode: ViTMode = "maskclip"  # ViT towers (mvpseg-tiny-parts-vit): the last block's mode of every row; ResNets ignore it
    num_workers: int = 0  # data-loading processes during training
    precision: Precision = "auto"  # numeric precision of training and inference
    overlays: int = 4  # val images drawn with their predicted labels
    student_iters: int = 400  # MVP-SEG+ row: student training steps (0: no MVP-SEG+ row)
    student_self_train_from: int = 300  # MVP-SEG+ row: the step from which the student teaches itself
    student_batch_size: int = 16  # MVP-SEG+ row: student batch size
    student_crop_size: int = 96  # MVP-SEG+ row: random crops of the world's images
    student_lr: float = 5e-4  # MVP-SEG+ row: AdamW learning rate of the student
    student_head_channels: int = 64  # MVP-SEG+ row: width of the student's DeepLabv2 decoder
    views_rows: bool | None = None  # beyond the paper: add the rows MVP-SEG + views (view-assignment loss) and MVP-SEG + map-overlap penalty; none: in the parts world only


@dataclass
class StudentConfig:
    """The student network of MVP-SEG+ (a DeepLab taught by the prompts). Stored in student checkpoints.

    The defaults are MaskCLIP+'s student; mvpseg's own choices stay available as options.
    """

    arch: Literal["deeplabv2", "deeplabv3plus"] = "deeplabv2"  # DeepLabv2 (ASPP 6/12/18/24; VOC, COCO-Stuff) or DeepLabv3+ (Context)
    head: Literal["maskclip", "mvpseg"] = "maskclip"  # maskclip: MaskCLIP+'s head (D wide, features scored by product); mvpseg: a 1x1 projection, normalised features, learned tau1
    backbone: Literal["resnet101-v1c", "resnet50-v1c", "resnet101", "resnet50", "clip"] = "resnet101-v1c"  # mmseg ResNetV1c (deep stem, MaskCLIP+'s), torchvision ResNet, or a copy of the CLIP's own ResNet trunk
    backbone_weights: str | None = ""  # ImageNet checkpoint (local file) of a resnet backbone; none: a random start (required for the resnets)
    output_stride: Literal[8, 16] = 8  # the backbone's output stride: its last stages dilated instead of strided
    head_channels: int | None = None  # width of the decoder's convolutions (default: D with the maskclip head, 256 with mvpseg's)
    freeze_bn: Literal["none", "backbone", "all"] = "none"  # BatchNorms kept fixed: none (MaskCLIP+: all train, synchronised), the backbone's, or all
    background: bool | None = None  # learn an embedding for a class named "background" (none: when the dataset has one)

    def __post_init__(self) -> None:
        if isinstance(self.freeze_bn, bool):  # checkpoints of mvpseg 0.x stored a flag: True froze the backbone's
            self.freeze_bn = "backbone" if self.freeze_bn else "none"
        if self.freeze_bn not in ("none", "backbone", "all"):
            raise ValueError(f"freeze_bn must be none, backbone or all, not {self.freeze_bn!r}")
        if self.head not in ("maskclip", "mvpseg"):
            raise ValueError(f"head must be maskclip or mvpseg, not {self.head!r}")


@dataclass
class TransferConfig(RunConfig):
    """One MVP-SEG+ run (``mvpseg transfer``): the learned prompts teach a student network on a dataset."""

    prompts: str = ""  # the teacher: a prompt checkpoint from mvpseg train, a model folder or a Hub id org/name (required)
    # (type: ignore: the teacher's CLIP by default, None, where every other run names one; no RunConfig code reads it)
    clip: str | None = None  # type: ignore[assignment]  # open_clip architecture (none: the one the prompts were learned on)
    pretrained: str | None = "auto"  # CLIP weights: a tag or file; auto: those the prompts were learned on, else openai
    out: str = "runs/mvpseg-plus"  # run folder: student.safetensors, checkpoint, config and logs
    iters: int = 20000  # optimisation steps (MaskCLIP+: VOC 20k, Context 40k, COCO-Stuff 80k)
    self_train_from: int | None = None  # step (counted from 1, as MaskCLIP+) from which the student's own argmax replaces the teacher's; none: iters / 10
    batch_size: int = 16  # global batch size (MaskCLIP+: 4 per GPU on 4 GPUs)
    lr: float = 0.01  # learning rate (MaskCLIP+: 0.01, Context 0.004)
    schedule: Literal["cosine", "poly", "constant"] = "poly"  # learning-rate schedule (poly: power 0.9, as mmseg)
    min_lr: float = 1e-4  # the learning rate the poly and cosine schedules end at (MaskCLIP+: 1e-4)
    deterministic: bool = False  # torch's deterministic algorithms where it has them (CUDA: slower; what resume then guarantees: docs/reproduce.md)
    loss_norm: Literal["all", "labelled"] = "all"  # cross-entropy averaged over all pixels, ignored included (all: mmseg 0.x, MaskCLIP+) or over labelled pixels
    student: StudentConfig = field(default_factory=StudentConfig)
    pseudo_labels: str | None = None  # a folder of teacher labels from mvpseg pseudo-label; default: the teacher runs on each crop
    teacher_gpr: bool = False  # rank the teacher's unseen classes by its final map with GPR's class scores (off: the fused map)
    label_void: bool = False  # also label void (ignore) pixels with the teacher's unseen classes (off: MaskCLIP+'s rule)
    unseen_min_probability: float = 0.0  # mvpseg's option: unseen pixels whose probability among the unseen classes is below this stay unlabelled (0: off, as MaskCLIP+)

    def recorded(self) -> dict[str, Any]:
        values = self.to_dict()
        weights = values["student"]["backbone_weights"]
        if weights:
            values["student"]["backbone_weights"] = weights.replace("\\", "/").rsplit("/", 1)[-1]
        return values

    @property
    def self_training_step(self) -> int:
        """The first 0-based step of self-training: MaskCLIP+ counts steps from 1 and self-trains from count
        ``self_train_from`` on (VOC: 2000, i.e. after 1,999 teacher steps)."""
        start = self.self_train_from if self.self_train_from is not None else max(self.iters // 10, 1)
        return max(start - 1, 0)


#: Named student networks (``mvpseg transfer --student-preset NAME``): MaskCLIP+'s two, and faster ones with
#: mvpseg's head (predict times against MVP-SEG's in docs/benchmarks.md, benchmarks/student_bench.py).
STUDENT_PRESETS: dict[str, dict[str, Any]] = {
    # MaskCLIP+ on VOC and COCO-Stuff, and on Context: its D-wide heads on ResNetV1c-101
    "paper": {"arch": "deeplabv2", "head": "maskclip", "backbone": "resnet101-v1c", "output_stride": 8},
    "paper-v3plus": {"arch": "deeplabv3plus", "head": "maskclip", "backbone": "resnet101-v1c", "output_stride": 8},
    "r50-v3plus-os16": {"arch": "deeplabv3plus", "head": "mvpseg", "backbone": "resnet50", "output_stride": 16},
    "fast": {"arch": "deeplabv2", "head": "mvpseg", "backbone": "resnet50", "output_stride": 16, "head_channels": 128},
}

#: Per-dataset presets of ``mvpseg transfer``: MaskCLIP+'s recipe (its configs/maskclip_plus/zero_shot/* and
#: schedule_*k.py): SGD, poly to 1e-4, the teacher until 10% of the steps then self-training (``self_train_from``
#: unset: it follows ``--iters``), the D-wide MaskCLIP+ heads (DeepLabv2 for VOC and COCO-Stuff, DeepLabv3+ for
#: Context) on ResNetV1c-101, every BatchNorm trained, the loss averaged over all pixels. The fields not named
#: here take TransferConfig's and StudentConfig's defaults, which are MaskCLIP+'s VOC values.
TRANSFER_PRESETS: dict[str, dict[str, Any]] = {
    "voc": {"dataset": "voc", "iters": 20000, "crop_size": 512},
    "context": {"dataset": "context", "iters": 40000, "lr": 0.004, "weight_decay": 1e-4,
                "crop_size": 480, "scale": (2048, 520), "student": {"arch": "deeplabv3plus"}},
    "coco-stuff": {"dataset": "coco-stuff", "iters": 80000, "crop_size": 512},
    "context60": {"dataset": "context60", "iters": 40000, "lr": 0.004, "weight_decay": 1e-4,
                  "crop_size": 480, "scale": (520, 520), "student": {"arch": "deeplabv3plus"}},
}
