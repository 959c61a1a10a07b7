"""Labels at full resolution within a memory budget: bilinear upsampling of class log-scores, block by block.

The segmenter's maps live on the feature grid (one cell per 8-32 pixels). Upsampling every class to
the image's size at once would take ``C x H x W`` floats (171 classes at 4096 x 4096: 11 GiB), so
:func:`upsample_log_scores` visits one block of output rows and one class at a time, keeps a running
maximum, and skips classes that provably cannot win in a quad of four cells. The labels equal the
argmax of ``F.interpolate(log_scores, size, mode="bilinear")``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["UpsampleStats", "upsample_log_scores", "block_rows", "interpolate_cells", "label_log_scores"]


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


def interpolate_cells(maps: torch.Tensor, size: tuple[int, int], cells_per_pixel: tuple[float, float]) -> torch.Tensor:
    """Maps on the feature grid bilinearly interpolated to ``size`` at once, with the geometry of
    :func:`upsample_log_scores` (a resized image's grid over the output pixels): every value materialised.

    Args:
        maps: (C, h, w) float32.
        size: (H, W) the output size.
        cells_per_pixel: feature cells per output pixel, rows and columns.

    Returns:
        (C, H, W) float32.
    """
    rows = _axis_weights(size[0], cells_per_pixel[0], maps.shape[1], maps.device)
    cols = _axis_weights(size[1], cells_per_pixel[1], maps.shape[2], maps.device)
    tall = maps[:, rows[0]] * rows[2][:, None] + maps[:, rows[1]] * rows[3][:, None]  # (C, h, w) -> (C, H, w)
    return tall[:, :, cols[0]] * cols[2] + tall[:, :, cols[1]] * cols[3]  # (C, H, w) -> (C, H, W)


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


def block_rows(width: int, budget_bytes: float, rows: int | None = None) -> int:
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


@dataclass
class UpsampleStats:
    """What one :func:`upsample_log_scores` call computed, filled in when passed to it (benchmarks, tests).

    The unit of work, and of memory, is a class block: one class's values over one block of output rows.
    """

    class_blocks: int = 0  # class blocks computed (bands that one class wins outright need none)
    values: int = 0  # class values computed in all, the sum of the blocks' sizes (pruning lowers it)
    largest_block: tuple[int, ...] = ()  # shape of the largest class block held at once: (rows, columns)

    @property
    def block_bytes(self) -> int:
        """Memory of the largest block's temporaries (:data:`_LIVE_ROWS` float32 rows like it): what
        ``budget_bytes`` bounds, unless a single row is over it."""
        return math.prod(self.largest_block) * 4 * _LIVE_ROWS if self.largest_block else 0

    def add(self, block: torch.Tensor) -> None:
        """Count one class block (rows, columns)."""
        self.class_blocks += 1
        self.values += block.numel()
        if block.numel() > (math.prod(self.largest_block) if self.largest_block else -1):
            self.largest_block = tuple(block.shape)


def _interpolate_rows(top: torch.Tensor, bottom: torch.Tensor, weight_top: torch.Tensor,
                      weight_bottom: torch.Tensor) -> torch.Tensor:
    """Rows between two width-interpolated cell rows of one class: (W,) x2, (r,) x2 -> (r, W) float32."""
    block = top[None] * weight_top[:, None]  # (1, W) * (r, 1) -> (r, W)
    return block.add_(bottom[None] * weight_bottom[:, None])


def upsample_log_scores(log_scores: torch.Tensor, size: tuple[int, int], cells_per_pixel: tuple[float, float],
                        budget_bytes: float = 64 * 2**20, rows: int | None = None, with_scores: bool = False,
                        prune: bool = True, stats: UpsampleStats | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
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
        budget_bytes: memory of one row block's temporaries (see :func:`block_rows`).
        rows: fixed rows per block instead of the budget.
        with_scores: also return ``exp`` of the upsampled log-scores.
        prune: skip the classes that cannot win (labels only); False visits every class.
        stats: an :class:`UpsampleStats` to count the class blocks into (their temporaries' memory,
            ``stats.block_bytes``, is within ``budget_bytes``).

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
    step = block_rows(width, budget_bytes, rows)
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
                if stats is not None:
                    stats.add(value)
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


def label_log_scores(log_scores: torch.Tensor, labels: torch.Tensor, cells_per_pixel: tuple[float, float],
                     budget_bytes: float = 64 * 2**20, rows: int | None = None) -> torch.Tensor:
    """Each pixel's upsampled log-score of its own label: the largest class value, found without every class.

    The value is the one :func:`upsample_log_scores` compares (width first, then rows, in the same
    order of operations), computed for one class per pixel, a block of rows at a time.

    Args:
        log_scores: (C, h, w) float32 log-scores on the cell grid.
        labels: (H, W) integer class of each output pixel (e.g. :func:`upsample_log_scores`'s labels).
        cells_per_pixel: (y, x) cells per output pixel, as for :func:`upsample_log_scores`.
        budget_bytes: memory of one row block's temporaries.
        rows: fixed rows per block instead of the budget.

    Returns:
        (H, W) float32 on the input's device.
    """
    device = log_scores.device
    _, cells_h, cells_w = log_scores.shape
    height, width = labels.shape
    y0, y1, wy0, wy1 = _axis_weights(height, cells_per_pixel[0], cells_h, device)
    x0, x1, wx0, wx1 = _axis_weights(width, cells_per_pixel[1], cells_w, device)
    flat = log_scores.reshape(-1)  # (C, h, w) -> (C * h * w,)
    values = torch.empty(height, width, dtype=torch.float32, device=device)

    def widened(planes: torch.Tensor, cell_rows: torch.Tensor) -> torch.Tensor:
        """The pixels' classes (as first cell rows (r, W)) at cell rows (r,), interpolated along the width: (r, W)."""
        base = (planes + cell_rows[:, None]) * cells_w
        return flat[base + x0] * wx0 + flat[base + x1] * wx1

    step = block_rows(width, budget_bytes / 2, rows)  # about twice a label block's temporaries
    for start in range(0, height, step):
        stop = min(start + step, height)
        planes = labels[start:stop].to(device=device, dtype=torch.int64) * cells_h  # (r, W)
        top, bottom = widened(planes, y0[start:stop]), widened(planes, y1[start:stop])
        values[start:stop] = top * wy0[start:stop, None] + bottom * wy1[start:stop, None]
    return values
