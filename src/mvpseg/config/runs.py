"""The settings of runs: prompt training, MVP-SEG+ transfer and its student network, the demo; with their presets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .base import DEFAULT_CLIP, TINY_CLIP_NAME, Precision, ViTMode, from_dict, to_dict
from .model import LossWeights, MVPSegConfig

__all__ = ["DEMO_PRESETS", "STUDENT_PRESETS", "TRAIN_PRESETS", "TRANSFER_PRESETS", "DemoConfig", "RunConfig",
           "StudentConfig", "TrainConfig", "TransferConfig"]


@dataclass
class RunConfig:
    """What every training run has: its data and augmentation, the CLIP, the optimiser and schedule, the run folder."""

    dataset: str = "voc"  # voc, context (59 classes), context60 (with background), coco-stuff, or custom (VOC-like layout with class_names.txt and unseen.txt)
    data_root: str = ""  # the dataset folder, in its usual layout (required)
    split: str = "train"  # training split (voc: with the SBD aug set when present)
    class_names_file: str | None = None  # replace the dataset's class names (one per line)
    unseen_file: str | None = None  # replace the unseen split (unseen class names, one per line)
    every_class_seen: bool = False  # no unseen split: train on every class (the cross-dataset protocol's prompts: all 171 COCO-Stuff classes, as CAT-Seg and SAN train)
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
    vit_mode: ViTMode = "maskclip"  # ViT towers (mvpseg-tiny-parts-hvit, mvpseg-tiny-parts-vit): the last block's mode of every row; ResNets ignore it
    num_workers: int = 0  # data-loading processes during training
    precision: Precision = "auto"  # numeric precision of training and inference
    overlays: int = 4  # val images drawn with their predicted labels
    student_iters: int = 400  # MVP-SEG+ row: student training steps (0: no MVP-SEG+ row; a ViT CLIP has none: the student stands on the CLIP's ResNet trunk)
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
