"""The settings of a model: MVP-SEG's prompts and head, its losses, and which model segments (a model source)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .base import ViTMode, check_vit_mode, from_dict, to_dict

__all__ = ["LossWeights", "MVPSegConfig", "ModelSource"]


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
    vit_mode: ViTMode = "maskclip"  # last ViT block for dense features: maskclip, value, qq (ClearCLIP), qk (ClearCLIP as released), csa (SCLIP), naclip, resclip, scclip, or vanilla (untouched: the baseline)

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

    clip: str | None = None  # open_clip architecture (RN50, ViT-B-16, ... or the shipped tiny CLIPs mvpseg-tiny, mvpseg-tiny-parts, mvpseg-tiny-parts-vit, mvpseg-tiny-parts-hvit); default the checkpoint's, else ViT-B-16 (templates)
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
