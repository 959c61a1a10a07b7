"""The settings of inference: the resize, the windows, the scoring, the dense options, and each dataset's preset."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar, Literal, get_args

from ..windows import Box, sliding_windows
from .base import PRECISIONS, Precision, from_dict

__all__ = ["EVAL_PRESETS", "STUDENT_EVAL_PRESETS", "DenseOptions", "InferenceConfig", "TemplateSet", "inference_made_for",
           "with_overrides"]


@dataclass
class DenseOptions:
    """How a ViT's dense mode runs beyond its name: each mode's own parameters and the positional-embedding
    resize (:mod:`mvpseg.dense`). The defaults are mvpseg's; the peers' protocols set theirs per benchmark
    (:mod:`mvpseg.protocols`; docs/modes.md lists every repository's values). ResNet towers ignore them."""

    position_resize: Literal["grid", "authors"] = "grid"  # positional embedding on another patch grid: grid (bicubic to exactly the grid) or authors (bicubic with scale_factor (g + 0.1) / g0, as SCLIP, ClearCLIP, NACLIP, ResCLIP and SC-CLIP resize it; another sampling of the same grid)
    naclip_std: float = 5.0  # naclip, resclip: the neighbourhood Gaussian's standard deviation, in patches (NACLIP's and ResCLIP's gaussian_std: 5 on every benchmark)
    resclip_lambda: float = 0.4  # resclip: weight of the middle blocks' attention in RCS (ResCLIP's configs: 0.2 Cityscapes, 0.3 VOC-21, Context-60, ADE20K, 0.4 Context-59, COCO-Stuff, COCO-Object, 0.6 VOC-20)
    resclip_tau: float = 2.0  # resclip: scale of the RCS attention (ResCLIP's configs: 2 on every benchmark)
    resclip_sfr: bool = False  # resclip with the template classifier: ResCLIP's semantic feedback refinement (mvpseg.feedback), a first segmentation of each window steering its last block's attention; needs the class names, so learned prompts and students refuse it (ResCLIP's segmentor always runs it: the resclip protocol turns it on)
    sfr_tau: float = 1.8  # resclip_sfr: scale of the last block's logits mixed with the feedback (ResCLIP's attn_sfr_weights[0]: 1.8 Context, COCO; 2.1 VOC-20, Cityscapes, ADE20K; 2.2 VOC-21)
    sfr_lambda: float = 0.7  # resclip_sfr: weight of the feedback in those logits (attn_sfr_weights[1]: 0.6 VOC-20, Cityscapes; 0.7 elsewhere)
    sfr_threshold: float = 0.25  # resclip_sfr: pixels of the first segmentation less sure than this count as its first name (ResCLIP's temp_thd: 0.10 to 0.50 per benchmark)

    def __post_init__(self) -> None:
        if self.position_resize not in ("grid", "authors"):
            raise ValueError(f"position_resize must be grid or authors, not {self.position_resize!r}")
        if self.naclip_std <= 0:
            raise ValueError(f"naclip_std must be positive, not {self.naclip_std}")
        if not 0.0 <= self.resclip_lambda <= 1.0:
            raise ValueError(f"resclip_lambda must be in [0, 1], not {self.resclip_lambda}")
        if self.resclip_tau <= 0:
            raise ValueError(f"resclip_tau must be positive, not {self.resclip_tau}")
        if self.sfr_tau <= 0 or not 0.0 <= self.sfr_lambda <= 1.0 or not 0.0 <= self.sfr_threshold <= 1.0:
            raise ValueError(f"sfr_tau must be positive and sfr_lambda and sfr_threshold in [0, 1], not {self.sfr_tau}, "
                             f"{self.sfr_lambda} and {self.sfr_threshold}")


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
    resize_filter: Literal["antialias", "bilinear", "cv2"] = "antialias"  # antialias: bilinear with antialiasing (mvpseg); bilinear: without, the image back in 8 bits; cv2: OpenCV's cv2.resize on the 8-bit image, as mmcv's Resize runs it (the peers; needs opencv-python-headless: pip install "mvpseg[peers]")
    stitch: Literal["cells", "pixels"] = "cells"  # cells: windows averaged on the feature grid, scores upsampled once (mvpseg); pixels: each window's cosines upsampled to its pixels, averaged over overlaps, then upsampled to the image's own size (the peers' forward_slide)
    partial_patches: Literal["stretch", "pad"] = "stretch"  # stitch pixels: a window side that is not a whole number of patches is seen on its whole patches, their maps stretched over it (stretch: SCLIP, NACLIP, ResCLIP, SC-CLIP), or padded with zeros on both sides to whole patches, the maps cut back (pad: ClearCLIP)
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
        if self.resize_filter not in ("antialias", "bilinear", "cv2"):
            raise ValueError(f"resize_filter must be antialias, bilinear or cv2, not {self.resize_filter!r}")
        if self.partial_patches not in ("stretch", "pad"):
            raise ValueError(f"partial_patches must be stretch or pad, not {self.partial_patches!r}")
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

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """The (H', W') an image of (height, width) is segmented at.

        ``long_side``: mmseg's img_scale=(L, L) with keep_ratio (mmcv's rescale_size), the factor L / long side,
        sizes rounded half up as int(x * s + 0.5), small images enlarged (500x375 -> 520x390 at L = 520).
        ``short_side`` with ``resize_cap``: the peers' Resize(scale=(cap, S), keep_ratio=True), the factor that fits
        the long side in the cap and the short side in S, rounded the same way (500x375 -> 448x336 at (2048, 336)).
        ``short_side`` alone: the factor S / short side, rounded to the nearest. Neither: the image's own size.
        """
        if self.long_side is not None:
            scale = self.long_side / max(height, width)
        elif self.short_side is not None and self.resize_cap is not None:
            scale = min(self.resize_cap / max(height, width), self.short_side / min(height, width))
        elif self.short_side is not None and min(height, width) != self.short_side:
            scale = self.short_side / min(height, width)
            return max(round(height * scale), 1), max(round(width * scale), 1)
        else:
            return height, width
        return max(int(height * scale + 0.5), 1), max(int(width * scale + 0.5), 1)

    @property
    def scores_at_pixels(self) -> bool:
        """Whether a setting needs every class's probability at every pixel of the image (the peers' protocols:
        ``stitch="pixels"``, the ``softmax-max`` synonym rule, a logit scale, ``area_thd``, ``prob_thd``, PAMR),
        where mvpseg's own protocol upsamples log-scores block by block to labels (:mod:`mvpseg.upsample`). Such
        maps take ``C x H x W`` floats: 150 classes on a 2048 x 1024 image, 1.2 GiB."""
        return (self.stitch == "pixels" or self.synonym_rule != "max-logit" or self.logit_scale is not None
                or self.area_thd > 0 or self.prob_thd > 0 or self.pamr_steps > 0)

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

    def window_boxes(self, height: int, width: int, feature_stride: int) -> list[Box]:
        """The windows (y0, y1, x0, x1) of an image padded to whole feature cells: the whole image (``mode="whole"``),
        else crops every :attr:`window_stride` pixels, on whole cells (:meth:`window_on_cells`; the step at most the
        side, so windows never leave a gap) or, with ``stitch="pixels"``, of ``crop_size`` anywhere (the peers')."""
        if self.mode == "whole":
            return [(0, height, 0, width)]
        if self.stitch == "pixels":
            return sliding_windows(height, width, self.crop_size, self.window_stride)
        return sliding_windows(height, width, *self.window_on_cells(feature_stride))


def with_overrides(config: InferenceConfig, overrides: Mapping[str, Any] | None) -> InferenceConfig:
    """``config`` with the fields a user typed laid over it; a new crop without a stride takes the crop's
    default stride (a recorded stride belongs to the recorded crop).

    Raises:
        ValueError: an explicit stride larger than the crop (one line).
    """
    overrides = dict(overrides or {})
    if "crop_size" in overrides and "stride" not in overrides:
        overrides["stride"] = None
    dense = dict(overrides.pop("dense", None) or {})  # the dense options: a dict, or dotted fields ("dense.naclip_std")
    dense.update({key.removeprefix("dense."): overrides.pop(key) for key in list(overrides) if key.startswith("dense.")})
    if dense:
        overrides["dense"] = replace(config.dense, **dense)
    return replace(config, **overrides)


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
