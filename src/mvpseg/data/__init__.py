"""Datasets, class names and splits, transforms, the shipped class-name files and the `mvpseg prepare` converters."""

from .ade20k_full import prepare_ade847
from .cityscapes import prepare_cityscapes
from .classes import (
    BUILTIN_DATASETS,
    DatasetInfo,
    dataset_info,
    peer_class_file,
    read_class_names,
    read_peer_classes,
)
from .coco_stuff import prepare_coco_object, prepare_coco_stuff
from .datasets import DataLayoutError, SegmentationDataset, build_dataset, custom_info, read_image, read_label
from .pascal_context_459 import prepare_pc459
from .transforms import EvalTransform, TrainAugmentation

__all__ = [
    "BUILTIN_DATASETS",
    "DataLayoutError",
    "DatasetInfo",
    "EvalTransform",
    "SegmentationDataset",
    "TrainAugmentation",
    "build_dataset",
    "custom_info",
    "dataset_info",
    "peer_class_file",
    "prepare_ade847",
    "prepare_cityscapes",
    "prepare_coco_object",
    "prepare_coco_stuff",
    "prepare_pc459",
    "read_class_names",
    "read_image",
    "read_label",
    "read_peer_classes",
]
