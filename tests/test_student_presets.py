"""Named student networks: each preset is a valid StudentConfig, and --student-preset lays it under the flags."""

from __future__ import annotations

import pytest

from mvpseg.cli import build_parser
from mvpseg.cli.common import run_config
from mvpseg.cli.transfer import with_student_preset
from mvpseg.config import STUDENT_PRESETS, TRANSFER_PRESETS, StudentConfig, TransferConfig, from_dict


@pytest.mark.parametrize("name", sorted(STUDENT_PRESETS))
def test_presets_are_student_configs(name: str) -> None:
    config = from_dict(StudentConfig, STUDENT_PRESETS[name], "student preset")
    assert config.output_stride in (8, 16)
    # the paper's presets are MaskCLIP+'s students; the faster ones use mvpseg's head
    assert STUDENT_PRESETS["paper"] == {"arch": "deeplabv2", "head": "maskclip", "backbone": "resnet101-v1c",
                                        "output_stride": 8}
    assert StudentConfig(**STUDENT_PRESETS["paper"]) == StudentConfig(backbone_weights="")  # = the defaults


def test_student_preset_flag_under_the_student_flags_given() -> None:
    def config(*extra: str) -> TransferConfig:
        args = build_parser().parse_args(["transfer", "--dataset", "context", "--data-root", "data", "--prompts",
                                          "p.safetensors", *extra])
        return with_student_preset(run_config(args, TransferConfig, TRANSFER_PRESETS), args)

    assert config().student.arch == "deeplabv3plus"  # the dataset's preset without the flag
    fast = config("--student-preset", "fast").student
    assert (fast.arch, fast.head, fast.backbone, fast.output_stride, fast.head_channels) == (
        "deeplabv2", "mvpseg", "resnet50", 16, 128)
    assert config("--student-preset", "fast").lr == 0.004  # the rest of the dataset's preset stays
    wider = config("--student-preset", "fast", "--head-channels", "64").student
    assert (wider.backbone, wider.head_channels) == ("resnet50", 64)
