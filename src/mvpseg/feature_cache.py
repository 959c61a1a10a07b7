"""Training from cached dense features: CLIP is frozen, so each augmented view's features never change.

A cache holds, for every training image and each of ``V`` augmented views, the L2-normalised dense
features (fp16) and the view's training labels, in two memory-mapped ``.npy`` files. View ``v`` of
image ``i`` is exactly the view the uncached path draws in epoch ``v`` (both use
``default_rng([seed, i, v])``), so training from a cache of ``V`` views gives the uncached path's
losses (up to fp16 rounding) for the first ``V`` epochs, and then cycles through the views.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .clip import ClipBundle, weights_fingerprint
from .config import TrainConfig
from .dense import dense_features, feature_stride

__all__ = ["CacheSpaceError", "FeatureCache", "build_feature_cache", "cache_key", "cache_size_bytes", "view_rng",
           "weights_fingerprint"]

_META = "meta.json"
#: Free space a cache must leave on its disk: 5 % of its own size plus 256 MiB (logs, checkpoints, the system).
_MARGIN_FRACTION, _MARGIN_BYTES = 0.05, 256 * 2**20


class CacheSpaceError(ValueError):
    """A feature cache would not fit on its disk; the message is one sentence saying what to do."""


def cache_size_bytes(num_samples: int, views: int, channels: int, grid: tuple[int, int],
                     label_size: tuple[int, int]) -> int:
    """The bytes a feature cache takes (the two small ``.npy`` headers aside).

    fp16 features ``N * V * D * h * w * 2`` plus uint8 labels ``N * V * S_h * S_w``.

    Args:
        num_samples: N training images.
        views: V augmented views per image.
        channels: D, the dense features' width (CLIP's embedding size: RN50 1024, ViT-B/16 512).
        grid: (h, w) feature cells of one view (the crop over the feature stride).
        label_size: (S_h, S_w) of one view's labels (the crop).

    Returns:
        The size in bytes.
    """
    per_view = channels * grid[0] * grid[1] * 2 + label_size[0] * label_size[1]
    return num_samples * views * per_view


def _size(count: float) -> str:
    """Bytes in the largest binary unit that keeps the number at or above 1 ("26.0 KiB", "31.0 GiB")."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024:
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    return f"{count:.1f} TiB"


def _check_space(folder: Path, needed: int, num_samples: int, views: int) -> None:
    """Refuse, in one sentence, a cache that would not fit (with the margin) on the disk of ``folder``."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # the nearest existing parent: the disk the cache would go to
    free = shutil.disk_usage(existing).free
    if needed * (1 + _MARGIN_FRACTION) + _MARGIN_BYTES > free:
        raise CacheSpaceError(
            f"the feature cache of {num_samples} images x {views} views needs {_size(needed)} "
            f"(plus a margin of 5 % and 256 MiB) but {existing} has {_size(free)} free: use fewer "
            f"--cache-views, another --feature-cache folder on a larger disk, or train without --feature-cache"
        )


def view_rng(seed: int, index: int, view: int) -> np.random.Generator:
    """The random generator of augmented view ``view`` of sample ``index``."""
    return np.random.default_rng([seed, index, view])


#: The run settings a feature cache depends on (with the resolved data root, the ViT mode and the CLIP's weights).
_KEY_FIELDS = {"dataset", "split", "class_names_file", "unseen_file", "every_class_seen", "transductive", "clip",
               "pretrained", "crop_size", "scale", "ratio_range", "cat_max_ratio", "photometric", "seed", "cache_views"}


def cache_key(config: TrainConfig, clip: ClipBundle) -> dict[str, Any]:
    """What the cached views of a prompt-training run depend on: a cache made with another key is not used."""
    key = {name: value for name, value in config.to_dict().items() if name in _KEY_FIELDS}
    key["data_root"] = str(Path(config.data_root).resolve())
    key["vit_mode"] = config.model.vit_mode
    key["clip_weights"] = clip.fingerprint
    return key


class FeatureCache:
    """A finished cache folder, memory-mapped read-only.

    Args:
        folder: a folder written by :func:`build_feature_cache`.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.meta: dict[str, Any] = json.loads((self.folder / _META).read_text())
        self.features = np.load(self.folder / "features.npy", mmap_mode="r")  # (N*V, D, h, w) float16
        self.labels = np.load(self.folder / "labels.npy", mmap_mode="r")  # (N*V, S, S) uint8
        self.views = int(self.meta["views"])

    def get(self, index: int, view: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (D, h, w) float16 and labels (S, S) int64 of one view (``view`` is taken modulo V)."""
        row = index * self.views + view % self.views
        return torch.from_numpy(np.array(self.features[row])), torch.from_numpy(self.labels[row].astype(np.int64))

    @staticmethod
    def matches(folder: str | Path, key: dict[str, Any]) -> bool:
        """Whether ``folder`` holds a finished cache made with exactly ``key``."""
        meta = Path(folder) / _META
        return meta.is_file() and json.loads(meta.read_text()).get("key") == key


@torch.no_grad()
def build_feature_cache(folder: str | Path, key: dict[str, Any], views: int, num_samples: int, load_view,
                        clip_model: torch.nn.Module, normalize, vit_mode: str = "maskclip",
                        device: str | torch.device = "cpu", batch_size: int = 32, autocast=None,
                        progress: bool = True) -> FeatureCache:
    """Compute and store the dense features of every view of every sample; reuse a matching cache.

    Args:
        folder: the cache folder; written to a temporary sibling and renamed when complete.
        key: what the cache depends on (dataset, CLIP, augmentation, seed, vocabulary, ...); a cache
            with another key is rebuilt.
        views: augmented views per sample.
        num_samples: the number of samples.
        load_view: ``(index, view) -> (image uint8 (3, S, S), label int64 (S, S))``.
        clip_model: the frozen CLIP.
        normalize: ``images float (B, 3, S, S) in [0, 1] -> CLIP input``.
        vit_mode: see :func:`mvpseg.dense_features`.
        device: where to run the image tower.
        batch_size: views per forward pass.
        autocast: an autocast context for the image tower, or None.
        progress: show a progress bar.

    Returns:
        The :class:`FeatureCache`.

    Raises:
        CacheSpaceError: the cache would not fit on its disk (checked before anything is computed).
    """
    folder = Path(folder)
    if FeatureCache.matches(folder, key):
        return FeatureCache(folder)
    import contextlib

    tmp = folder.with_name(folder.name + ".incomplete")
    shutil.rmtree(tmp, ignore_errors=True)  # a stale, unfinished build: its space is free again
    # The size from one view and the tower's shape, before anything is written: fp16 features of
    # D x (S / stride)^2 and uint8 labels of S x S per view (dense_features floors to the stride).
    visual: Any = getattr(clip_model, "visual", clip_model)  # open_clip's image tower: untyped
    image, label = load_view(0, 0)
    stride = feature_stride(visual)
    grid = (image.shape[-2] // stride, image.shape[-1] // stride)
    needed = cache_size_bytes(num_samples, views, int(visual.output_dim), grid, tuple(label.shape[-2:]))
    _check_space(tmp, needed, num_samples, views)
    tmp.mkdir(parents=True)
    jobs = [(index, view) for index in range(num_samples) for view in range(views)]
    features = labels = None
    dense: torch.Tensor | np.ndarray  # the batch's features, then their fp16 array (the tensor freed)
    bar = tqdm(total=len(jobs), desc="feature cache", unit="view", disable=not progress)
    for start in range(0, len(jobs), batch_size):
        chunk = [load_view(index, view) for index, view in jobs[start : start + batch_size]]
        images = torch.stack([image for image, _ in chunk]).to(device).float() / 255.0  # (b, 3, S, S)
        with autocast or contextlib.nullcontext():
            dense = dense_features(clip_model, normalize(images), vit_mode)
        dense = F.normalize(dense.float(), dim=1).half().cpu().numpy()  # (b, D, h, w)
        if features is None:
            features = np.lib.format.open_memmap(tmp / "features.npy", mode="w+", dtype=np.float16,
                                                 shape=(len(jobs), *dense.shape[1:]))
            labels = np.lib.format.open_memmap(tmp / "labels.npy", mode="w+", dtype=np.uint8,
                                               shape=(len(jobs), *chunk[0][1].shape))
        assert labels is not None  # opened with features
        features[start : start + len(chunk)] = dense
        labels[start : start + len(chunk)] = torch.stack([label for _, label in chunk]).numpy().astype(np.uint8)
        bar.update(len(chunk))
    bar.close()
    assert features is not None and labels is not None
    features.flush()
    labels.flush()
    del features, labels
    (tmp / _META).write_text(json.dumps({"key": key, "views": views, "samples": num_samples}, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return FeatureCache(folder)
