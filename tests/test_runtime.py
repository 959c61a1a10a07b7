"""Devices and precision: one meaning of "auto" for training and inference; files written safely."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from mvpseg.files import atomic_write, write_text
from mvpseg.runtime import autocast, autocast_dtype, default_device, grad_scaler


def test_precision_resolves_the_same_everywhere() -> None:
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, "auto") is None and autocast_dtype(cpu, "fp32") is None
    assert autocast_dtype(cpu, "bf16") is torch.bfloat16 and autocast_dtype(cpu, "fp16") is torch.float16
    with autocast(cpu, "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast(cpu, "auto"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    assert grad_scaler(cpu, "fp16") is not None  # fp16 scales its loss wherever it runs
    assert grad_scaler(cpu, "bf16") is None and grad_scaler(cpu, "auto") is None
    with pytest.raises(ValueError, match="auto, fp32, bf16, fp16"):
        autocast_dtype(cpu, "fp8")
    assert default_device("cpu") == cpu
    assert default_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_written_files_have_the_users_normal_permissions(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        path = write_text(tmp_path / "sub" / "metrics.json", "{}")
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        os.umask(0o002)
        other = atomic_write(tmp_path / "b.bin", lambda tmp: Path(tmp).write_bytes(b"x"))
        assert stat.S_IMODE(other.stat().st_mode) == 0o664
    finally:
        os.umask(previous)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["b.bin", "metrics.json", "sub"]  # no temporary left


def test_a_file_is_flushed_before_it_takes_its_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    write_text(tmp_path / "x.txt", "hello")
    assert events[:2] == ["fsync", "replace"]  # the data reaches the disk before the name points at it
    assert (tmp_path / "x.txt").read_text() == "hello"


def test_failed_write_leaves_the_old_file(tmp_path: Path) -> None:
    target = write_text(tmp_path / "prompts.safetensors", "old")

    def explode(tmp: str) -> None:
        Path(tmp).write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, explode)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["prompts.safetensors"]
