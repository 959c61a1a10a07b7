"""An independent reference of the training-free peers' evaluation, written from their description, one step at a
time as their segmentors run it (``benchmarks/studies/protocols_vs_authors.py`` runs their own code):

1. mmcv's ``Resize(scale=(cap, S), keep_ratio=True)``: the factor ``min(cap / long side, S / short side)``, the sizes
   ``int(x * factor + 0.5)``, OpenCV's bilinear ``cv2.resize`` on the 8-bit image; then CLIP's mean and std;
2. the query list: every name of every line of the class file, in order, repeats kept; each query's text embedding
   the renormalised mean of its normalised embeddings over OpenAI's 80 templates;
3. ``forward_slide``: one window at a time (mmseg's window rule), the window's normalised patch features against
   the queries, bilinearly stretched over the window, summed into a canvas and divided by the count; or the whole
   image as one window; then bilinear to the original size;
4. PAMR with the resized image brought to the original size as its guide;
5. ``postprocess_result``: ``softmax(logit_scale * cosines)`` over the queries, each class the maximum of its
   queries, ``area_thd``, the argmax, ``prob_thd``.

The dense features and PAMR are mvpseg's own (each pinned against its authors' code by test_vit_modes.py and
test_pamr.py); everything around them is written here again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from mvpseg.config import DenseOptions
from mvpseg.dense import dense_features
from mvpseg.model import MVPSeg
from mvpseg.pamr import pamr


@dataclass
class PeerSettings:
    short_side: int
    crop: int  # 0: the whole image
    stride: int
    logit_scale: float
    prob_thd: float = 0.0
    area_thd: float | None = None
    pamr_steps: int = 0
    cap: int = 2048
    pad: bool = False  # ClearCLIP: a window side off the patch grid padded with zeros on both sides, maps cut back


def class_lines(path: Path) -> list[list[str]]:
    """Each line of a class file, split at ", " as the peers' get_cls_idx splits it."""
    return [line.split(", ") for line in path.read_text(encoding="utf-8").splitlines()]


def query_embeddings(model: MVPSeg, queries: list[str]) -> torch.Tensor:
    """(Q, D) each query's embedding over OpenAI's 80 templates, one query at a time."""
    clip = model.clip
    rows = []
    with torch.no_grad():
        for query in queries:
            tokens = clip.tokenizer([template(query) for template in OPENAI_IMAGENET_TEMPLATES])
            encoded = clip.model.encode_text(tokens).float()
            encoded = encoded / encoded.norm(dim=-1, keepdim=True)
            mean = encoded.mean(dim=0)
            rows.append(mean / mean.norm())
    return torch.stack(rows)


def peer_segment(model: MVPSeg, lines: list[list[str]], image: np.ndarray, settings: PeerSettings,
                 options: DenseOptions) -> tuple[np.ndarray, np.ndarray]:
    """Labels (H, W) and per-class probabilities before the thresholds (C, H, W) of one image."""
    queries = [name for line in lines for name in line]
    owner = torch.tensor([index for index, line in enumerate(lines) for _ in line])
    text = query_embeddings(model, queries)  # (Q, D)
    height, width = image.shape[:2]
    factor = min(settings.cap / max(height, width), settings.short_side / min(height, width))
    size = (int(height * factor + 0.5), int(width * factor + 0.5))
    if size != (height, width):
        import cv2  # mmcv's imresize

        image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    mean, std = model.normalisation(torch.device("cpu"))
    x = (pixels / 255.0 - mean) / std  # (1, 3, h, w)
    rows, cols = size
    if settings.crop:
        grid_rows = max(rows - settings.crop + settings.stride - 1, 0) // settings.stride + 1
        grid_cols = max(cols - settings.crop + settings.stride - 1, 0) // settings.stride + 1
        windows = []
        for r in range(grid_rows):
            for c in range(grid_cols):
                bottom, right = min(r * settings.stride + settings.crop, rows), min(c * settings.stride + settings.crop, cols)
                windows.append((max(bottom - settings.crop, 0), bottom, max(right - settings.crop, 0), right))
    else:
        windows = [(0, rows, 0, cols)]
    canvas = torch.zeros(len(queries), rows, cols)
    count = torch.zeros(1, rows, cols)
    with torch.no_grad():
        for top, bottom, left, right in windows:
            crop = x[:, :, top:bottom, left:right]
            height_pad = (-(bottom - top) % model.feature_stride) if settings.pad else 0
            width_pad = (-(right - left) % model.feature_stride) if settings.pad else 0
            crop = F.pad(crop, (width_pad // 2, width_pad - width_pad // 2, height_pad // 2, height_pad - height_pad // 2))
            features = dense_features(model.clip_model.visual, crop, model.config.vit_mode, options)[0].float()
            features = features / features.norm(dim=0, keepdim=True)  # (D, gh, gw)
            cosines = torch.einsum("dhw,qd->qhw", features, text)
            stretched = F.interpolate(cosines[None], size=crop.shape[-2:], mode="bilinear", align_corners=False)[0]
            stretched = stretched[:, height_pad // 2 : height_pad // 2 + bottom - top,
                                  width_pad // 2 : width_pad // 2 + right - left]
            canvas[:, top:bottom, left:right] += stretched
            count[:, top:bottom, left:right] += 1
        logits = F.interpolate((canvas / count)[None], size=(height, width), mode="bilinear", align_corners=False)
        if settings.pamr_steps:
            guide = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
            logits = pamr(guide, logits, steps=settings.pamr_steps)
        probabilities = (logits[0] * settings.logit_scale).softmax(dim=0)  # (Q, H, W)
        per_class = torch.stack([probabilities[owner == c].amax(dim=0) for c in range(len(lines))])  # (C, H, W)
        scored = per_class.clone()
        if settings.area_thd is not None:
            winners = scored.argmax(dim=0)
            areas = torch.stack([(winners == c).sum() for c in range(1, len(lines))]).float()
            kept = (areas > settings.area_thd * areas.sum()).float()
            scored[1:] *= kept[:, None, None]
        labels = scored.argmax(dim=0)
        labels[scored.max(dim=0).values < settings.prob_thd] = 0
    return labels.numpy(), per_class.numpy()
