"""Open-vocabulary inference: any image, any list of class names.

Layers, top to bottom: :meth:`Segmenter.predict` (paths, PIL or NumPy in, NumPy out), then
:meth:`Segmenter.predict_torch` (a normalised tensor in, log-scores at feature resolution out),
then :class:`mvpseg.MVPSeg` itself.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.modified_resnet import ModifiedResNet
from torch import nn

from .checkpoint import build_mvpseg, load_mvpseg, read_prompt_checkpoint
from .clip import ClipBundle, load_clip
from .dense import dense_features, feature_stride
from .image import ImageInput, load_image
from .model import MVPSeg, MVPSegOutput
from .prompts import validate_class_names

__all__ = ["InferenceConfig", "Prediction", "Segmenter", "fold_batchnorm", "sliding_windows", "upsample_log_scores"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class InferenceConfig:
    """How images are fed to the model."""

    short_side: int | None = 512  # resize so the short side has this length; None keeps the size
    mode: str = "slide"  # "slide": overlapping crop windows (ZegCLIP); "whole": the whole image at once (MaskCLIP)
    crop_size: int = 512  # sliding-window side (rounded down to a multiple of the feature stride)
    stride: int = 426  # sliding-window step (rounded to a multiple of the feature stride)
    batch_size: int = 4  # windows per forward pass
    precision: str = "auto"  # auto: fp16 autocast on CUDA, fp32 on the CPU; or fp32, bf16, fp16
    upsample_budget_mib: float = 64.0  # memory of the float blocks of upsampled class scores (bounds memory on huge images)
    upsample_rows: int | None = None  # output rows per block; None: as many as the budget allows
    text_batch: int = 32  # classes encoded by the text tower at once (bounds memory for large vocabularies)
    fold_batchnorm: bool = True  # ResNet towers: a copy with the frozen BatchNorms folded into the convolutions
    channels_last: bool = True  # ResNet towers: NHWC convolutions (faster with oneDNN and cuDNN)

    def __post_init__(self) -> None:
        if self.mode not in ("slide", "whole"):
            raise ValueError(f"mode must be 'slide' or 'whole', not {self.mode!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.short_side is not None and self.short_side < 1:
            raise ValueError("short_side must be positive")
        if self.crop_size < 1 or self.stride < 1 or self.batch_size < 1:
            raise ValueError("crop_size, stride and batch_size must be positive")
        if self.upsample_budget_mib <= 0 or (self.upsample_rows is not None and self.upsample_rows < 1):
            raise ValueError("upsample_budget_mib and upsample_rows must be positive")
        if self.text_batch < 1:
            raise ValueError("text_batch must be positive")


@dataclass
class Prediction:
    """A segmentation of one image.

    Attributes:
        labels: (H, W) int32 class indices into ``class_names``, at the input's own resolution.
        class_names: the vocabulary, background names first when one was given.
        scores: (C, H, W) float32 final map ``softmax_c(fused) * g`` in [0, 1], when requested.
        presence: (C,) GPR's image-level class scores, or None without GPR.
    """

    labels: np.ndarray
    class_names: list[str]
    scores: np.ndarray | None = None
    presence: np.ndarray | None = None

    def class_shares(self) -> dict[str, float]:
        """Fraction of the image's pixels given to each class (classes never predicted get 0)."""
        counts = np.bincount(self.labels.ravel(), minlength=len(self.class_names))
        total = max(int(self.labels.size), 1)
        return {name: float(count) / total for name, count in zip(self.class_names, counts.tolist())}


def sliding_windows(height: int, width: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """Window boxes (y0, y1, x0, x1) covering an image, as mmsegmentation's slide inference does.

    The last window in each direction is shifted back to end at the border; an image smaller than
    the crop gives one window of its own size.
    """
    rows = max(height - crop + stride - 1, 0) // stride + 1
    cols = max(width - crop + stride - 1, 0) // stride + 1
    boxes = []
    for row in range(rows):
        for col in range(cols):
            y1, x1 = min(row * stride + crop, height), min(col * stride + crop, width)
            boxes.append((max(y1 - crop, 0), y1, max(x1 - crop, 0), x1))
    return boxes


def fold_batchnorm(visual: nn.Module) -> nn.Module:
    """A copy of a frozen image tower with every ``BatchNorm2d`` folded into the convolution before it.

    In eval mode a BatchNorm is an affine map per channel, ``y = (x - mean) / sqrt(var + eps) * gamma + beta``,
    so ``bn(conv(x))`` equals one convolution with scaled weights and a bias: one pass over the
    activations less per BatchNorm. The result equals the original up to float rounding. Pairs are
    found by open_clip's names (``convN`` then ``bnN``; ``0`` then ``1`` in a downsampling branch);
    a BatchNorm without a convolution before it is kept.

    Args:
        visual: an image tower (e.g. open_clip's ``ModifiedResNet``); it is not changed.

    Returns:
        The folded copy, in eval mode, without gradients.
    """
    folded = copy.deepcopy(visual).eval().requires_grad_(False)
    for module in folded.modules():
        children = dict(module.named_children())
        for name, norm in children.items():
            if not isinstance(norm, nn.BatchNorm2d) or norm.running_mean is None or norm.running_var is None:
                continue
            conv_name = "conv" + name[2:] if name.startswith("bn") else str(int(name) - 1) if name.isdigit() else ""
            conv = children.get(conv_name)
            if not isinstance(conv, nn.Conv2d):
                continue
            with torch.no_grad():
                gamma = norm.weight if norm.weight is not None else torch.ones_like(norm.running_var)
                beta = norm.bias if norm.bias is not None else torch.zeros_like(norm.running_mean)
                scale = gamma / torch.sqrt(norm.running_var + norm.eps)  # (out,)
                bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
                conv.weight.copy_(conv.weight * scale[:, None, None, None])
                conv.bias = nn.Parameter((bias - norm.running_mean) * scale + beta, requires_grad=False)
            setattr(module, name, nn.Identity())
    return folded


def _axis_weights(size: int, cells_per_pixel: float, cells: int,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bilinear source cells and weights along one axis, computed as ``F.interpolate`` (align_corners=False) does.

    Output pixel i sits at ``cells_per_pixel * (i + 0.5) - 0.5`` on the cell grid, clamped to the border.

    Returns:
        index0, index1 (int64, (size,)) the two cells, weight0, weight1 (float32, (size,)) their weights.
    """
    real = ((torch.arange(size, device=device, dtype=torch.float32) + 0.5) * cells_per_pixel - 0.5).clamp_min(0)
    index0 = real.long().clamp_max(cells - 1)
    index1 = (index0 + 1).clamp_max(cells - 1)
    weight1 = (real - index0).clamp(0, 1)
    return index0, index1, 1 - weight1, weight1


def _quad_candidates(log_scores: torch.Tensor, margin: float) -> torch.Tensor:
    """Which classes can win somewhere between four neighbouring cells: a first, cheap bound.

    A bilinearly interpolated value lies between the smallest and largest of its four corners, so a
    class whose largest corner is below another class's smallest corner (by more than ``margin``,
    which covers float rounding) never wins in that quad.

    Args:
        log_scores: (C, h, w) float32.
        margin: how much lower a class must be to be dropped.

    Returns:
        (C, h, w) bool: class c can win in the quad whose top-left cell is (j, i) (the last row and
        column pair with themselves, as the border clamp does).
    """
    padded = torch.cat([log_scores, log_scores[:, -1:]], dim=1)
    padded = torch.cat([padded, padded[:, :, -1:]], dim=2)[None]  # (1, C, h+1, w+1)
    upper = F.max_pool2d(padded, kernel_size=2, stride=1)[0]  # (C, h, w): largest corner
    lower = -F.max_pool2d(-padded, kernel_size=2, stride=1)[0]  # (C, h, w): smallest corner
    return upper >= lower.amax(dim=0, keepdim=True) - margin


def _first_true(mask: torch.Tensor, count: int) -> torch.Tensor:
    """Row indices of the first ``count`` True entries of each column of ``mask`` (K, w), in order
    (then the indices of False entries): a stable sort of "not True"."""
    return torch.sort((~mask).to(torch.uint8), dim=0, stable=True).indices[:count]


def _band_candidates(log_scores: torch.Tensor, band: int, next_band: int, possible: torch.Tensor,
                     used: torch.Tensor, margin: float, budget_bytes: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The classes that can win in each quad of one band of cell rows, ascending.

    Starts from the cheap bound (``possible``), then drops every class that another candidate beats
    at all four corners of the quad by more than ``margin``: the difference of two bilinear
    interpolations is itself a bilinear interpolation of the corner differences, so it stays
    positive inside the quad.

    Args:
        log_scores: (C, h, w) float32.
        band, next_band: the quads' two cell rows.
        possible: (C, w) bool, :func:`_quad_candidates` of the band.
        used: (w,) bool, the quads some output column falls in.
        margin: see :func:`_quad_candidates`.
        budget_bytes: memory the pairwise comparison may take (skipped beyond it).

    Returns:
        (K, w) int64 class indices per quad, ascending, padded with the quad's first class (a repeat
        never beats the first maximum), K the largest count over the used quads; and (w,) the count
        of each quad.
    """
    device = log_scores.device
    counts = possible.sum(dim=0)  # (w,)
    most = int(counts[used].max())
    order = _first_true(possible, most)  # (K, w)
    valid = torch.arange(most, device=device)[:, None] < counts[None]  # (K, w)
    cells_w = log_scores.shape[2]
    if 1 < most and most * most * 4 * cells_w <= budget_bytes:
        right = (torch.arange(cells_w, device=device) + 1).clamp_max(cells_w - 1)
        rows = log_scores[:, [band, next_band]]  # (C, 2, w)
        corners = torch.cat([rows, rows[:, :, right]], dim=1)  # (C, 4, w): the quads' four corners
        values = corners.gather(0, order[:, None].expand(-1, 4, -1))  # (K, 4, w)
        beats = (values[:, None] > values[None] + margin).all(dim=2)  # (K, K, w): b beats c everywhere
        valid = valid & ~(beats & valid[:, None]).any(dim=0)
        survivors = valid.sum(dim=0)  # (w,)
        if int(survivors[used].min()) >= 1:  # always, unless the scores hold NaN
            most = int(survivors[used].max())
            order = order.gather(0, _first_true(valid, most))  # (K', w)
            valid = torch.arange(most, device=device)[:, None] < survivors[None]
    return torch.where(valid, order, order[:1]), valid.sum(dim=0)


#: float32-sized rows of width W that one upsampling row block keeps alive at most: the running
#: maximum, the value of a class, a product (or its exp with scores), the update mask, the winning
#: slot (int64: two), and at the end its class (int64: two).
_LIVE_ROWS = 8


def _block_rows(width: int, budget_bytes: float, rows: int | None = None) -> int:
    """Output rows upsampled at once, so that a block's temporaries (:data:`_LIVE_ROWS` float32 rows of
    ``width``) stay within ``budget_bytes``. The number of classes does not matter: classes are visited
    one after the other.

    Args:
        width: output width W.
        budget_bytes: memory a block may take.
        rows: a fixed number of rows instead (wins over the budget).

    Returns:
        At least 1 row.
    """
    if rows is not None:
        return max(int(rows), 1)
    return max(int(budget_bytes // (_LIVE_ROWS * 4 * width)), 1)


def _interpolate_rows(top: torch.Tensor, bottom: torch.Tensor, weight_top: torch.Tensor,
                      weight_bottom: torch.Tensor) -> torch.Tensor:
    """Rows between two width-interpolated cell rows of one class: (W,) x2, (r,) x2 -> (r, W) float32."""
    block = top[None] * weight_top[:, None]  # (1, W) * (r, 1) -> (r, W)
    return block.add_(bottom[None] * weight_bottom[:, None])


def upsample_log_scores(log_scores: torch.Tensor, size: tuple[int, int], cells_per_pixel: tuple[float, float],
                        budget_bytes: float = 64 * 2**20, rows: int | None = None, with_scores: bool = False,
                        prune: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Labels (and scores) of bilinearly upsampled log-scores, a block of rows and a class at a time.

    The value of class c at output pixel (y, x) is computed as ``F.interpolate(log_scores, size,
    mode="bilinear")`` defines it: the two cell rows around y are interpolated along the width
    (``(C, W)`` each), then each output row between them. The label is the first class of largest
    value (``argmax``), found with a running maximum over the classes, so no block ever holds more
    than one class. Labels only visit the classes that can win in each quad of four cells
    (:func:`_band_candidates`), in ascending order, which gives the same argmax as all classes. No
    float tensor of every class at full resolution is made unless ``with_scores`` asks for it.

    Args:
        log_scores: (C, h, w) float32 log-scores on the cell grid.
        size: (H, W) output size.
        cells_per_pixel: (y, x) cells per output pixel (cell grid coordinate of pixel i is
            ``cells_per_pixel * (i + 0.5) - 0.5``).
        budget_bytes: memory of one row block's temporaries (see :func:`_block_rows`).
        rows: fixed rows per block instead of the budget.
        with_scores: also return ``exp`` of the upsampled log-scores.
        prune: skip the classes that cannot win (labels only); False visits every class.

    Returns:
        labels (H, W) int32 on the input's device; scores (C, H, W) float32 on the CPU, or None.
    """
    device = log_scores.device
    num_classes, cells_h, cells_w = log_scores.shape
    height, width = size
    y0, _, wy0, wy1 = _axis_weights(height, cells_per_pixel[0], cells_h, device)
    x0, x1, wx0, wx1 = _axis_weights(width, cells_per_pixel[1], cells_w, device)
    labels = torch.empty(height, width, dtype=torch.int32, device=device)
    scores = torch.empty(num_classes, height, width) if with_scores else None
    margin = 1e-5 * float(log_scores.abs().amax()) + 1e-30  # float rounding of an interpolation is far below
    possible = _quad_candidates(log_scores, margin) if prune and not with_scores else None
    used = torch.zeros(cells_w, dtype=torch.bool, device=device)
    used[x0] = True  # quads (by column) that some output pixel falls in
    widened: dict[int, torch.Tensor] = {}

    def cell_row(index: int) -> torch.Tensor:
        """Cell row ``index`` interpolated along the width: (C, W); the last two are kept."""
        if index not in widened:
            row = log_scores[:, index]  # (C, w)
            widened[index] = row[:, x0] * wx0 + row[:, x1] * wx1  # (C, W)
            for stale in [key for key in widened if key < index - 1]:
                del widened[stale]
        return widened[index]

    bands, band_sizes = torch.unique_consecutive(y0, return_counts=True)  # output rows sharing their cell rows
    step = _block_rows(width, budget_bytes, rows)
    start = 0
    for band, band_size in zip(bands.tolist(), band_sizes.tolist()):
        stop, next_band = start + band_size, min(band + 1, cells_h - 1)
        inverse = None  # where each output column went in the candidates' column order; None: in order
        visited = [width] * num_classes  # visited[k]: how many (reordered) columns class slot k is tried at
        if possible is None:
            top, bottom = cell_row(band), cell_row(next_band)  # (C, W) each
        else:
            quad_classes, quad_counts = _band_candidates(log_scores, band, next_band, possible[:, band], used,
                                                         margin, budget_bytes)  # (K, w), (w,)
            if quad_classes.shape[0] == 1:  # one class can win anywhere in this band
                labels[start:stop] = quad_classes[0, x0][None].to(torch.int32)
                start = stop
                continue
            # Columns sorted by their number of candidates, most first: slot k then runs over a prefix
            # of the columns, so each column costs its own quad's count, not the band's largest.
            counts = quad_counts[x0]  # (W,)
            columns = torch.argsort(counts, descending=True, stable=True)
            inverse = torch.argsort(columns)
            left, right = x0[columns], x1[columns]
            classes = quad_classes[:, left]  # (K, W) in the new column order
            # The candidates' cell rows interpolated along the width, as cell_row computes every class's.
            top, bottom = (
                log_scores[:, cell].flatten()[classes * cells_w + left] * wx0[columns]
                + log_scores[:, cell].flatten()[classes * cells_w + right] * wx1[columns]
                for cell in (band, next_band)
            )  # (K, W) each
            visited = (counts[None] > torch.arange(classes.shape[0], device=device)[:, None]).sum(dim=1).tolist()
        for first_row in range(start, stop, step):
            last_row = min(first_row + step, stop)
            weight_top, weight_bottom = wy0[first_row:last_row], wy1[first_row:last_row]
            best = winner = None
            for k in range(top.shape[0]):
                span = visited[k]
                value = _interpolate_rows(top[k, :span], bottom[k, :span], weight_top, weight_bottom)  # (r, span)
                if scores is not None:
                    scores[k, first_row:last_row] = value.exp().cpu()
                if best is None or winner is None:
                    best, winner = value, torch.zeros_like(value, dtype=torch.int64)
                    continue
                better = value > best[:, :span]  # strictly: ties keep the earlier class, as argmax does
                winner[:, :span].masked_fill_(better, k)
                torch.maximum(best[:, :span], value, out=best[:, :span])
            assert winner is not None
            if inverse is not None:  # slots -> classes, back in the image's column order
                winner = classes.gather(0, winner)  # (r, W), columns reordered
                winner = winner.gather(1, inverse[None].expand_as(winner))
            labels[first_row:last_row] = winner
        start = stop
    return labels, scores


class Segmenter:
    """MVP-SEG (or the MaskCLIP template baseline) ready to segment images.

    Args:
        model: an :class:`MVPSeg`.
        clip: the :class:`ClipBundle` the model was built on (for normalisation constants).
        config: how images are resized and windowed.
        device: where to run; default CUDA when available.
    """

    def __init__(self, model: MVPSeg, clip: ClipBundle, config: InferenceConfig | None = None,
                 device: str | torch.device | None = None) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.clip = clip
        clip.model.to(self.device)
        self.model = model.to(self.device).eval()
        self.config = config or InferenceConfig()
        self.stride = feature_stride(clip.model.visual)
        self.visual = self._inference_tower(clip.model.visual)
        self._mean = torch.tensor(clip.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(clip.std, device=self.device).view(1, 3, 1, 1)
        self._text_cache: dict[tuple[str, ...], torch.Tensor] = {}

    @classmethod
    def from_pretrained(
        cls,
        clip: str | None = None,
        pretrained: str | os.PathLike[str] | None = "openai",
        prompts: str | os.PathLike[str] | None = None,
        device: str | torch.device | None = None,
        config: InferenceConfig | None = None,
    ) -> Segmenter:
        """Load CLIP and, optionally, learned prompts.

        Args:
            clip: open_clip architecture; default the checkpoint's, else "RN50".
            pretrained: open_clip tag, local weights file, or None for random weights.
            prompts: a prompt checkpoint; None uses MaskCLIP's 85 templates.
            device: where to run; default CUDA when available.
            config: inference options.

        Returns:
            A ready :class:`Segmenter`.
        """
        if clip is None:
            clip = read_prompt_checkpoint(prompts)[1]["config"]["clip_name"] if prompts is not None else "RN50"
        target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        bundle = load_clip(clip, pretrained, device=target)
        model = load_mvpseg(prompts, bundle) if prompts is not None else build_mvpseg(bundle, None)
        return cls(model, bundle, config=config, device=target)

    def _inference_tower(self, visual: nn.Module) -> nn.Module:
        """The image tower as inference runs it: ResNets with BatchNorms folded and NHWC weights."""
        if not isinstance(visual, ModifiedResNet):
            return visual
        if self.config.fold_batchnorm:
            visual = fold_batchnorm(visual)
        if self.config.channels_last:
            if visual is self.clip.model.visual:
                visual = copy.deepcopy(visual)  # the caller's CLIP keeps its memory format
            visual = visual.to(memory_format=torch.channels_last)
        return visual

    def features(self, crops: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) L2-normalised dense features of normalised crops (B, 3, H, W): ``model.features``
        computed with the inference tower."""
        if self.config.channels_last and isinstance(self.visual, ModifiedResNet):
            crops = crops.contiguous(memory_format=torch.channels_last)
        features = dense_features(self.visual, crops, self.model.config.vit_mode)
        return F.normalize(features.float(), dim=1)

    def _autocast(self) -> contextlib.AbstractContextManager:
        precision = self.config.precision
        if precision == "auto":
            precision = "fp16" if self.device.type == "cuda" else "fp32"
        if precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def text_embeddings(self, class_names: Sequence[str]) -> torch.Tensor:
        """(P, C, D) class embeddings, computed once per vocabulary and cached.

        Classes go through the text tower ``config.text_batch`` at a time: each class's prompts are
        encoded on their own (causal text tower), so the embeddings are those of one batch, with a
        fraction of its activations in memory (171 classes x 4 prompts at once: about 700 MiB).
        """
        names = tuple(validate_class_names(class_names))
        if names not in self._text_cache:
            step = self.config.text_batch
            with torch.inference_mode(), self._autocast():
                parts = [self.model.text_embeddings(names[start : start + step]).float()
                         for start in range(0, len(names), step)]  # (P, c, D) each
            self._text_cache[names] = torch.cat(parts, dim=1)  # (P, C, D)
        return self._text_cache[names]

    def _windows(self, height: int, width: int) -> Iterator[tuple[int, int, int, int]]:
        step = self.stride
        if self.config.mode == "whole":
            yield 0, height, 0, width
            return
        crop = max(self.config.crop_size // step, 1) * step
        stride = max(round(self.config.stride / step), 1) * step
        yield from sliding_windows(height, width, crop, stride)

    def predict_torch(self, images: torch.Tensor, class_names: Sequence[str]) -> MVPSegOutput:
        """Segment already resized, normalised images.

        Args:
            images: (B, 3, H, W) float, normalised with CLIP's mean and std, on any device.
            class_names: C class names.

        Returns:
            :class:`MVPSegOutput` over the feature grid (ceil(H / s), ceil(W / s)), s the feature stride;
            windows are stitched on that grid.
        """
        text = self.text_embeddings(class_names)
        images = images.to(self.device)
        batch, _, height, width = images.shape
        step = self.stride
        padded_h, padded_w = math.ceil(height / step) * step, math.ceil(width / step) * step
        # Pad with zeros (the mean colour after normalisation) so windows sit on whole feature cells.
        images = F.pad(images, (0, padded_w - width, 0, padded_h - height))
        canvas = torch.zeros(batch, text.shape[0], text.shape[1], padded_h // step, padded_w // step,
                             device=self.device)  # (B, P, C, h, w)
        counts = torch.zeros(1, 1, 1, padded_h // step, padded_w // step, device=self.device)
        boxes = list(self._windows(padded_h, padded_w))
        with torch.inference_mode(), self._autocast():
            for start in range(0, len(boxes), self.config.batch_size):
                chunk = boxes[start : start + self.config.batch_size]
                same_size = len({(y1 - y0, x1 - x0) for y0, y1, x0, x1 in chunk}) == 1
                groups = [chunk] if same_size else [[box] for box in chunk]
                for group in groups:
                    crops = torch.cat([images[:, :, y0:y1, x0:x1] for y0, y1, x0, x1 in group])  # (G*B, 3, h', w')
                    maps = self.model.cosine_maps(self.features(crops), text).float()  # (G*B, P, C, h', w')
                    for index, (y0, y1, x0, x1) in enumerate(group):
                        window = maps[index * batch : (index + 1) * batch]
                        canvas[..., y0 // step : y1 // step, x0 // step : x1 // step] += window
                        counts[..., y0 // step : y1 // step, x0 // step : x1 // step] += 1
            canvas = canvas / counts
            return self.model.head(canvas)

    def _resize(self, array: np.ndarray) -> torch.Tensor:
        # uint8 -> float on the contiguous HWC array, then scaled in place: the same numbers as
        # permuting first, in one pass less and without a second full-size float temporary.
        image = torch.from_numpy(array).to(self.device).float().div_(255.0)  # (H, W, 3) in [0, 1]
        image = image.permute(2, 0, 1)[None]  # HWC -> (1, 3, H, W) (a view)
        height, width = array.shape[:2]
        short_side = self.config.short_side
        if short_side is not None and min(height, width) != short_side:
            scale = short_side / min(height, width)
            size = (max(round(height * scale), 1), max(round(width * scale), 1))
            image = F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)
        return image.sub_(self._mean).div_(self._std)  # in place: no full-size temporaries

    def _upsample(self, output: MVPSegOutput, resized: tuple[int, int], size: tuple[int, int],
                  with_scores: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Labels (H, W) and optionally scores (C, H, W) at the input's size, a block of rows at a time."""
        log_scores = output.final_logits()[0].float()  # (C, h, w) over cells of `stride` resized pixels
        cells_per_pixel = (resized[0] / (size[0] * self.stride), resized[1] / (size[1] * self.stride))
        return upsample_log_scores(log_scores, size, cells_per_pixel, budget_bytes=self.config.upsample_budget_mib * 2**20,
                                   rows=self.config.upsample_rows, with_scores=with_scores)

    def predict(self, image: ImageInput, class_names: Sequence[str], background: str | None = None,
                return_scores: bool = False) -> Prediction:
        """Segment one image against any list of class names.

        Args:
            image: a path, a PIL image, or an HWC uint8 array in [0, 255] (see :func:`mvpseg.load_image`).
            class_names: C readable class names ("cat", "grass", ...).
            background: a name for everything else (e.g. "background"); it becomes class 0.
            return_scores: also return the (C, H, W) final map.

        Returns:
            :class:`Prediction` at the image's own resolution.
        """
        names = validate_class_names(([background] if background else []) + list(class_names))
        array = load_image(image)
        resized = self._resize(array)
        output = self.predict_torch(resized, names)
        with torch.inference_mode():
            labels, scores = self._upsample(output, tuple(resized.shape[-2:]), array.shape[:2], return_scores)
        presence = output.presence[0].cpu().numpy() if output.presence is not None else None
        return Prediction(
            labels=labels.cpu().numpy(),
            class_names=names,
            scores=scores.cpu().numpy() if scores is not None else None,
            presence=presence,
        )
