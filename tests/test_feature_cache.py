"""The feature cache's size: computed before anything is written, refused when the disk is too small."""

from __future__ import annotations

import shutil
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch

import mvpseg
from mvpseg.feature_cache import CacheSpaceError, build_feature_cache, cache_size_bytes

_Usage = namedtuple("_Usage", "total used free")


def _views(index: int, view: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One augmented view: (3, 64, 64) uint8 image and (64, 64) labels, deterministic per index and view."""
    generator = torch.Generator().manual_seed(index * 10 + view)
    image = torch.randint(0, 256, (3, 64, 64), generator=generator, dtype=torch.uint8)
    return image, torch.randint(0, 3, (64, 64), generator=generator)


def _build(folder: Path, clip: mvpseg.ClipBundle, samples: int = 3, views: int = 2):
    return build_feature_cache(folder, {"test": 1}, views, samples, _views, clip.model, lambda x: x, progress=False)


def test_cache_size_formula() -> None:
    # RN50 (D 1024) on VOC's 10,582 images, 4 views of 512 crops: 16 x 16 cells.
    assert cache_size_bytes(10582, 4, 1024, (16, 16), (512, 512)) == 10582 * 4 * (1024 * 256 * 2 + 512 * 512)


@pytest.mark.parametrize("name", ["test-tiny-rn", "test-tiny-vit"])
def test_the_size_is_what_is_written(name: str, tiny_rn: mvpseg.ClipBundle, tiny_vit: mvpseg.ClipBundle,
                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clip = tiny_rn if name == "test-tiny-rn" else tiny_vit
    seen: list[int] = []
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: seen.append(1) or real(path))
    cache = _build(tmp_path / "cache", clip)
    assert seen  # the free space was looked up
    features, labels = (np.load(tmp_path / "cache" / f"{n}.npy", mmap_mode="r") for n in ("features", "labels"))
    grid = (2, 2) if name == "test-tiny-rn" else (8, 8)  # stride 32 or 8 on 64-pixel views
    assert features.shape == (6, 32, *grid) and labels.shape == (6, 64, 64)
    assert cache_size_bytes(3, 2, 32, grid, (64, 64)) == features.nbytes + labels.nbytes
    assert cache.views == 2


def test_a_cache_too_big_for_the_disk_is_refused_in_one_sentence(tiny_rn: mvpseg.ClipBundle, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    looked_up: list[Path] = []

    def full_disk(path: str | Path) -> _Usage:
        looked_up.append(Path(path))
        return _Usage(total=2**40, used=2**40 - 100 * 2**20, free=100 * 2**20)  # 100 MiB free

    monkeypatch.setattr(shutil, "disk_usage", full_disk)
    folder = tmp_path / "not" / "yet" / "cache"
    with pytest.raises(CacheSpaceError) as info:
        _build(folder, tiny_rn)
    message = str(info.value)
    assert "\n" not in message and "needs 25.5 KiB" in message and "100.0 MiB free" in message
    assert "--cache-views" in message and "--feature-cache" in message
    assert looked_up == [tmp_path]  # the nearest existing parent of the folder to be made
    assert not (tmp_path / "not").exists()  # nothing was written
    assert isinstance(info.value, ValueError)  # the command line reports it in one line


def test_the_margin_counts(tiny_rn: mvpseg.ClipBundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    needed = cache_size_bytes(3, 2, 32, (2, 2), (64, 64))
    just_enough = int(needed * 1.05) + 256 * 2**20 + 1
    monkeypatch.setattr(shutil, "disk_usage", lambda path: _Usage(2**40, 0, just_enough))
    _build(tmp_path / "ok", tiny_rn)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: _Usage(2**40, 0, needed + 2**20))  # fits, no margin
    with pytest.raises(CacheSpaceError):
        _build(tmp_path / "tight", tiny_rn)
