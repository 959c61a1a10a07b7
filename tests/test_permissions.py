"""Every kind of file mvpseg writes gets the user's normal permissions (0o666 less the umask).

safetensors 0.8 renames a 0o600 file of its own over the path it is given, so a safetensors file can
come out private whatever our writer did: each file kind is written here under two umasks and checked.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from fakedata import write_custom
from PIL import Image
from safetensors.torch import save_file

import mvpseg
from mvpseg.build import build_student
from mvpseg.checkpoint import save_prompt_checkpoint, save_student_checkpoint, save_training_state
from mvpseg.cli import main
from mvpseg.config import MVPSegConfig, StudentConfig
from mvpseg.data import build_dataset
from mvpseg.evaluate import write_metrics
from mvpseg.files import write_text
from mvpseg.runs import RunLog
from mvpseg.transfer import write_pseudo_labels
from mvpseg.world.pretrain import save_weights


def _write_every_kind(folder: Path, clip: mvpseg.ClipBundle) -> None:
    """One file of every kind mvpseg writes, into ``folder``."""
    clip_file = folder / "clip.safetensors"
    save_file(dict(clip.model.state_dict()), clip_file)  # input only: written by safetensors, not checked
    clip_file.chmod(0o644)
    model = mvpseg.build_mvpseg(clip, MVPSegConfig(num_prompts=2, num_context=2),
                                generator=torch.Generator().manual_seed(0))
    prompts = save_prompt_checkpoint(folder / "out" / "prompts.safetensors", model)
    student = build_student(model, StudentConfig(head="mvpseg", backbone="clip", head_channels=8))
    save_student_checkpoint(folder / "out" / "student.safetensors", student, teacher={"prompts": "p"})
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trained, lr=0.1, momentum=0.9)
    for parameter in trained:
        parameter.grad = torch.ones_like(parameter)
    optimizer.step()  # momentum buffers: tensors in the optimiser's state
    save_training_state(folder / "out" / "checkpoint.safetensors", model, optimizer, step=1, config={})
    save_weights(clip.model, folder / "out" / "world-clip.safetensors", metadata={"format": "test"})
    write_metrics(folder / "out", {"miou": 0.5})
    write_text(folder / "out" / "config.json", "{}\n")
    log = RunLog(folder / "out", ["loss"], start_step=0, enabled=True)
    log.log(1, {"loss": 1.0})
    log.close()
    # Pseudo-labels and their meta.json.
    root = write_custom(folder / "data", num_train=1, num_val=1, size=(32, 32))
    segmenter = mvpseg.Segmenter(model, config=mvpseg.InferenceConfig(short_side=32))
    write_pseudo_labels(segmenter, build_dataset("custom", root, "train"), folder / "out" / "pseudo", progress=False)
    # Label maps, overlays and shares of `mvpseg segment`.
    image = folder / "photo.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    image.chmod(0o644)
    status = main(["segment", str(image), "--classes", "cat,dog", "--clip", clip.name, "--clip-weights",
                   str(clip_file), "--prompts", str(prompts), "--out", str(folder / "out" / "segment"),
                   "--short-side", "32", "--quiet"])
    assert status == 0


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_every_file_kind_gets_the_users_normal_permissions(umask: int, tmp_path: Path,
                                                           tiny_rn: mvpseg.ClipBundle) -> None:
    previous = os.umask(umask)
    try:
        _write_every_kind(tmp_path, tiny_rn)
    finally:
        os.umask(previous)
    files = sorted(p for p in (tmp_path / "out").rglob("*") if p.is_file())
    names = {p.relative_to(tmp_path / "out").as_posix() for p in files}
    for expected in ["prompts.safetensors", "student.safetensors", "checkpoint.safetensors",
                     "world-clip.safetensors", "metrics.json", "config.json", "log.csv", "pseudo/meta.json",
                     "segment/photo.png", "segment/photo_overlay.png", "segment/photo.json"]:
        assert expected in names
    assert any(name.startswith("pseudo/") and name.endswith(".png") for name in names)
    modes = {p.relative_to(tmp_path / "out").as_posix(): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert modes == {name: oct(0o666 & ~umask) for name in modes}
    assert not [p for p in tmp_path.rglob(".*.tmp")]  # no temporary file left behind
