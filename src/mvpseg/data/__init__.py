"""Datasets, class names and splits, transforms, and the COCO-Stuff label converter."""

from .classes import DatasetInfo, dataset_info, read_class_names
from .coco_stuff import prepare_coco_stuff
from .datasets import DataLayoutError, SegmentationDataset, build_dataset, custom_info, read_image, read_label
from .transforms import EvalTransform, TrainAugmentation

__all__ = [
    "DataLayoutError",
    "DatasetInfo",
    "EvalTransform",
    "SegmentationDataset",
    "TrainAugmentation",
    "build_dataset",
    "custom_info",
    "dataset_info",
    "prepare_coco_stuff",
    "read_class_names",
    "read_image",
    "read_label",
]
