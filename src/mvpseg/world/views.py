"""Where do the K prompts look? Each prompt's map over the parts of a thing, and how much the prompts differ.

For a thing class ``c`` and segmentation prompt ``k``, the prompt's own segmentation probability
``p_k(c | x) = softmax_c(K * tau1 * m_k(x))`` (its map read at the fused map's scale, upsampled to the
label size) is summed over the pixels of each part ``j`` of the thing's instances in the val images:

- **share** ``s_k(j) = sum_{x in part j} p_k(c|x) / sum_{x in thing} p_k(c|x)``: the share of the
  prompt's map inside the thing that falls on part ``j`` (large parts take large shares);
- **focus** ``f_k(j) ∝ mean_{x in part j} p_k(c|x)``: the same per pixel of each part (normalised over
  parts), which says which part the prompt prefers whatever the parts' sizes.

The **diversity** of a class is the mean pairwise Jensen-Shannon divergence (bits, in [0, 1]) between
the prompts' share distributions, and **differ** the fraction of prompt pairs whose strongest part (by
focus) differs. Identical prompts score 0 on both; prompts each wholly on a different part score 1.

That measure saturates: a prompt that prefers one part still gives its class the whole thing
(``p_k(c|x)`` near 1 on every part), so its shares follow the parts' areas whatever it prefers. The
measure of the paper's figure, **which prompt leads where**, reads the prompts against each other:
``l_k(c, x) = softmax_k(K tau1 m_k^c(x))`` (the same scale, the softmax over the K prompts instead of
the classes), with its shares, focus, JS (``lead_js``) and differ (``lead_differ``) as above. Identical
prompts lead 1/K everywhere: JS 0.

**Ceilings** (:func:`view_ceiling`): both measures of the best hard assignment of whole parts to prompts
(each prompt one part, a part reused when a thing has fewer parts than prompts; every map from prompts to
parts is tried, per thing class), its maps pooled to the feature grid (the fraction of each cell that is
the prompt's part) and measured through the same code: what the grid allows at best.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from mvpseg.model import ClipModel

__all__ = ["PartViews", "js_divergence", "measure_views", "prompt_lead", "prompt_logits", "prompt_softmax",
           "prompt_probabilities", "view_ceiling", "view_diversity", "view_figures"]


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence of two distributions (1-D, summing to 1), in bits: 0 equal, 1 disjoint."""
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> float:
        nonzero = a > 0
        return float(np.sum(a[nonzero] * np.log2(a[nonzero] / m[nonzero])))

    return 0.5 * kl(p) + 0.5 * kl(q)


def view_diversity(sums: np.ndarray, areas: np.ndarray) -> dict[str, Any]:
    """Shares, focus, diversity and how often the strongest parts differ, for one thing class.

    Args:
        sums: (K, J) each prompt's probability summed over each part's pixels.
        areas: (J,) pixels of each part.

    Returns:
        ``{"share": (K, J) list, "focus": (K, J) list, "js": float, "differ": float}``; ``js`` and
        ``differ`` are None for fewer than two prompts or no pixels.
    """
    sums = np.asarray(sums, dtype=np.float64)
    areas = np.asarray(areas, dtype=np.float64)
    totals = sums.sum(axis=1, keepdims=True)
    share = np.divide(sums, totals, out=np.zeros_like(sums), where=totals > 0)
    per_pixel = np.divide(sums, areas[None, :], out=np.zeros_like(sums), where=areas[None, :] > 0)
    norm = per_pixel.sum(axis=1, keepdims=True)
    focus = np.divide(per_pixel, norm, out=np.zeros_like(per_pixel), where=norm > 0)
    pairs = list(itertools.combinations(range(len(sums)), 2))
    valid = pairs and bool((totals > 0).all())
    js = float(np.mean([js_divergence(share[a], share[b]) for a, b in pairs])) if valid else None
    strongest = focus.argmax(axis=1)
    differ = float(np.mean([strongest[a] != strongest[b] for a, b in pairs])) if valid else None
    return {"share": share.tolist(), "focus": focus.tolist(), "js": js, "differ": differ}


@torch.no_grad()
def prompt_logits(model: ClipModel, images: torch.Tensor, class_names: Sequence[str]) -> torch.Tensor:
    """Each segmentation prompt's map at the fused map's scale, ``K tau1 m_k``: (B, K, C, h, w) float32.

    Args:
        model: an :class:`mvpseg.MVPSeg` with learned prompts.
        images: (B, 3, H, W) normalised with CLIP's mean and std.
        class_names: C names.
    """
    output = model(images, class_names)
    maps = output.prompt_maps[:, 1:] if model.head.has_global else output.prompt_maps  # (B, K, C, h, w)
    return model.head.tau1 * maps.shape[1] * maps.float()


def prompt_softmax(logits: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """``softmax_c`` of :func:`prompt_logits` (B, K, C, h, w), upsampled (bilinear) to ``size`` first when given."""
    batch, prompts, classes, h, w = logits.shape
    flat = logits.reshape(batch * prompts, classes, h, w)  # (B, K, C, h, w) -> (B*K, C, h, w)
    if size is not None:
        flat = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    return flat.softmax(dim=1).reshape(batch, prompts, classes, *flat.shape[-2:])  # -> (B, K, C, H', W')


def prompt_lead(logits: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Which prompt leads where: ``softmax_k`` of :func:`prompt_logits` (B, K, C, h, w), upsampled (bilinear) to
    ``size`` first when given; (B, K, C, H', W'), summing to 1 over K."""
    batch, prompts, classes, h, w = logits.shape
    flat = logits.reshape(batch * prompts, classes, h, w)  # (B, K, C, h, w) -> (B*K, C, h, w)
    if size is not None:
        flat = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    return flat.reshape(batch, prompts, classes, *flat.shape[-2:]).softmax(dim=1)  # -> (B, K, C, H', W')


def prompt_probabilities(model: ClipModel, images: torch.Tensor, class_names: Sequence[str],
                         size: tuple[int, int] | None = None) -> torch.Tensor:
    """Each segmentation prompt's own class probabilities ``softmax_c(K tau1 m_k)``.

    Args:
        model: an :class:`mvpseg.MVPSeg` with learned prompts.
        images: (B, 3, H, W) normalised with CLIP's mean and std.
        class_names: C names.
        size: (H', W') to upsample the logits to (bilinear) before the softmax; None keeps the grid.

    Returns:
        (B, K, C, H', W') float32 probabilities.
    """
    return prompt_softmax(prompt_logits(model, images, class_names), size)


class PartViews:
    """Accumulates each prompt's probability over the parts of every thing class, image after image.

    Args:
        num_prompts: K.
        thing_parts: for each thing class index, the part kinds it is made of.
    """

    def __init__(self, num_prompts: int, thing_parts: Sequence[Sequence[int]]) -> None:
        self.thing_parts = [tuple(parts) for parts in thing_parts]
        self.sums = [np.zeros((num_prompts, len(parts))) for parts in self.thing_parts]
        self.lead_sums = [np.zeros((num_prompts, len(parts))) for parts in self.thing_parts]
        self.areas = [np.zeros(len(parts)) for parts in self.thing_parts]

    def update(self, probabilities: np.ndarray, label: np.ndarray, parts: np.ndarray,
               lead: np.ndarray | None = None) -> None:
        """Add one image: probabilities (K, C, H, W), class labels (H, W), part kinds (H, W), and which prompt
        leads where (K, C, H, W, :func:`prompt_lead`) when given."""
        for c, kinds in enumerate(self.thing_parts):
            inside = label == c
            if not inside.any():
                continue
            for j, kind in enumerate(kinds):
                where = inside & (parts == kind)
                count = int(where.sum())
                if count:
                    self.areas[c][j] += count
                    self.sums[c][:, j] += probabilities[:, c][:, where].sum(axis=1)
                    if lead is not None:
                        self.lead_sums[c][:, j] += lead[:, c][:, where].sum(axis=1)

    def result(self, class_names: Sequence[str], part_names: Sequence[str],
               unseen: Sequence[str]) -> dict[str, object]:
        """Per thing class :func:`view_diversity` with its part names, and the means over things."""
        classes: dict[str, dict[str, Any]] = {}
        for c, kinds in enumerate(self.thing_parts):
            if self.areas[c].sum() == 0:
                continue
            entry = view_diversity(self.sums[c], self.areas[c])
            lead = view_diversity(self.lead_sums[c], self.areas[c])
            entry.update({f"lead_{key}": value for key, value in lead.items()})
            entry["parts"] = [part_names[kind] for kind in kinds]
            entry["unseen"] = class_names[c] in unseen
            classes[class_names[c]] = entry

        def mean(key: str, only_unseen: bool | None = None) -> float | None:
            values = [e[key] for e in classes.values() if e[key] is not None
                      and (only_unseen is None or e["unseen"] == only_unseen)]
            return float(np.mean(values)) if values else None

        summary = {"js": mean("js"), "js_seen": mean("js", False), "js_unseen": mean("js", True),
                   "differ": mean("differ"), "differ_unseen": mean("differ", True),
                   "lead_js": mean("lead_js"), "lead_js_seen": mean("lead_js", False),
                   "lead_js_unseen": mean("lead_js", True), "lead_differ": mean("lead_differ"),
                   "lead_differ_unseen": mean("lead_differ", True)}
        return {"classes": classes, "summary": summary}


def _part_mask(dataset, index: int) -> np.ndarray:
    """The part kinds (H, W) of sample ``index`` of a written parts world (ROOT/SegmentationPart/<id>.png)."""
    from mvpseg.data import read_label

    label_path = dataset.label_paths[index]
    return read_label(label_path.parent.parent / "SegmentationPart" / label_path.name)


def measure_views(segmenter, dataset, thing_parts: Sequence[Sequence[int]], part_names: Sequence[str],
                  limit: int | None = None) -> dict[str, object]:
    """:class:`PartViews` of a learned-prompt segmenter over a written parts world's split.

    Args:
        segmenter: an :class:`mvpseg.Segmenter` on an MVPSeg with learned prompts (whole-image mode at
            the world's scale, as the demo evaluates).
        dataset: the split (:func:`mvpseg.data.build_dataset` on a world written with part masks).
        thing_parts: the part kinds of each thing class (:func:`mvpseg.world.parts.thing_parts`).
        part_names: the part kinds' names.
        limit: only the first ``limit`` images.

    Returns:
        :meth:`PartViews.result`.
    """
    model = segmenter.model
    names = list(dataset.info.class_names)
    views = PartViews(model.config.num_prompts, thing_parts)
    for index in range(min(len(dataset), limit or len(dataset))):
        image, label = dataset.load(index)
        x = segmenter.resize(image)  # (1, 3, H', W') at the segmenter's scale, normalised
        logits = prompt_logits(model, x, names)  # (1, K, C, h, w)
        maps = prompt_softmax(logits, size=label.shape)[0].cpu().numpy()  # (K, C, H, W)
        lead = prompt_lead(logits, size=label.shape)[0].cpu().numpy()  # (K, C, H, W)
        views.update(maps, label, _part_mask(dataset, index), lead)
    return views.result(names, part_names, [names[c] for c in dataset.info.unseen])


def view_ceiling(dataset, thing_parts: Sequence[Sequence[int]], num_prompts: int, grid: tuple[int, int],
                 limit: int | None = None) -> dict[str, object]:
    """Both measures' ceilings on a written parts world's split: the best hard assignment of parts to prompts.

    For each thing class, every map ``g`` from the K prompts to its J parts (J^K of them) is tried: prompt k's
    map is the fraction of each feature cell that is part ``g(k)`` of the thing (pooled to ``grid``), its own
    class probability that fraction, and which prompt leads there that fraction normalised over the prompts
    (1/K where no prompt's part lies). Both go through the same upsampling and :class:`PartViews` as the
    prompts' maps; each measure keeps its best assignment per class.

    Args:
        dataset: the split (images at the scale the model sees them: label size = input size).
        thing_parts: the part kinds of each thing class.
        num_prompts: K.
        grid: (h, w) the feature grid of the model at that scale.
        limit: only the first ``limit`` images.

    Returns:
        ``{"classes": {index: {"js", "lead_js", "assignment", "lead_assignment"}}, "js", "lead_js", "js_unseen",
        "lead_js_unseen"}``: the per-class ceilings and their means over the thing classes present.
    """
    assignments = [list(itertools.product(range(len(kinds)), repeat=num_prompts)) for kinds in thing_parts]
    views = [[PartViews(num_prompts, [kinds]) for _ in assignments[c]] for c, kinds in enumerate(thing_parts)]
    for index in range(min(len(dataset), limit or len(dataset))):
        _, label = dataset.load(index)
        parts = _part_mask(dataset, index)
        for c, kinds in enumerate(thing_parts):
            inside = label == c
            if not inside.any():
                continue
            masks = np.stack([inside & (parts == kind) for kind in kinds]).astype(np.float32)  # (J, H, W)
            pooled = F.adaptive_avg_pool2d(torch.from_numpy(masks)[None], grid)[0]  # (J, h, w)
            choice = torch.tensor(assignments[c])  # (A, K) the part of each prompt
            own = pooled[choice]  # (A, K, h, w)
            total = own.sum(dim=1, keepdim=True)
            lead = torch.where(total > 0, own / total.clamp_min(1e-12), torch.full_like(own, 1.0 / num_prompts))
            both = torch.cat([own, lead], dim=1)  # (A, 2K, h, w)
            upsampled = F.interpolate(both, size=label.shape, mode="bilinear", align_corners=False).numpy()
            local = np.where(inside, 0, 255).astype(np.uint8)  # this class as class 0 of a one-class PartViews
            for a, accumulator in enumerate(views[c]):
                accumulator.update(upsampled[a, :num_prompts, None], local, parts, upsampled[a, num_prompts:, None])
    classes: dict[int, dict[str, Any]] = {}
    for c, accumulators in enumerate(views):
        if accumulators[0].areas[0].sum() == 0:
            continue
        js = [view_diversity(v.sums[0], v.areas[0])["js"] for v in accumulators]
        lead_js = [view_diversity(v.lead_sums[0], v.areas[0])["js"] for v in accumulators]
        if any(value is None for value in js + lead_js):  # a prompt whose part never shows: no figure
            js, lead_js = [-1.0 if v is None else v for v in js], [-1.0 if v is None else v for v in lead_js]
        best, best_lead = int(np.argmax(js)), int(np.argmax(lead_js))
        classes[c] = {"js": js[best], "lead_js": lead_js[best_lead], "assignment": list(assignments[c][best]),
                      "lead_assignment": list(assignments[c][best_lead])}
    unseen = set(dataset.info.unseen)

    def mean(key: str, only_unseen: bool = False) -> float | None:
        values = [entry[key] for c, entry in classes.items() if entry[key] is not None
                  and (not only_unseen or c in unseen)]
        return float(np.mean(values)) if values else None

    return {"classes": {str(c): entry for c, entry in classes.items()}, "js": mean("js"), "lead_js": mean("lead_js"),
            "js_unseen": mean("js", True), "lead_js_unseen": mean("lead_js", True)}


def view_figures(segmenter, dataset, out, world, count: int = 3, min_fraction: float = 0.08,
                 prefix: str = "views_") -> list:
    """The paper's figure in miniature: for up to ``count`` unseen things (the first val image where each
    covers at least ``min_fraction``), each segmentation prompt's probability of that thing (top row) and
    which prompt leads there (bottom row, ``softmax_k``, drawn on a fixed 0-1 scale), cell by cell on the
    feature grid, with the thing's parts outlined. Writes ``out/<prefix><class>.png``.

    Returns:
        The written paths.
    """
    from pathlib import Path

    from PIL import Image

    from mvpseg.viz import prompt_map_grid

    model = segmenter.model
    names = list(dataset.info.class_names)
    wanted = [c for c in dataset.info.unseen if c < len(world.THING_CLASSES)]
    written = []
    for index in range(len(dataset)):
        if not wanted:
            break
        image, label = dataset.load(index)
        areas = np.bincount(label.ravel(), minlength=len(names)) / label.size
        hits = [c for c in wanted if areas[c] >= min_fraction]
        if not hits:
            continue
        target = hits[0]
        wanted.remove(target)
        parts = _part_mask(dataset, index)
        logits = prompt_logits(model, segmenter.resize(image), names)  # one forward pass for both resolutions
        grid = prompt_softmax(logits)[0, :, target].cpu().numpy()  # (K, h, w)
        lead_grid = prompt_lead(logits)[0, :, target].cpu().numpy()  # (K, h, w)
        kinds = world.thing_parts(target)
        thing = np.where(label == target, parts, 255)
        views = PartViews(len(grid), [kinds if c == target else () for c in range(target + 1)])
        views.update(prompt_softmax(logits, size=label.shape)[0].cpu().numpy(), label, parts,
                     prompt_lead(logits, size=label.shape)[0].cpu().numpy())  # (K, C, H, W) each
        focus = view_diversity(views.sums[target], views.areas[target])["focus"]
        lead_focus = view_diversity(views.lead_sums[target], views.areas[target])["focus"]
        titles = [f"prompt {k + 1}: most on {world.PART_KINDS[kinds[int(np.argmax(f))]][0]}"
                  for k, f in enumerate(focus)]
        lead_titles = [f"prompt {k + 1} leads most on {world.PART_KINDS[kinds[int(np.argmax(f))]][0]}"
                       for k, f in enumerate(lead_focus)]
        top = prompt_map_grid(image, grid, titles, cell=192, outline=thing)
        bottom = prompt_map_grid(image, lead_grid, lead_titles, cell=192, outline=thing, value_range=(0.0, 1.0))
        canvas = Image.new("RGB", (top.width, top.height + bottom.height), "white")
        canvas.paste(top, (0, 0))
        canvas.paste(bottom, (0, top.height))
        path = Path(out) / f"{prefix}{names[target]}.png"
        canvas.save(path)
        written.append(path)
    return written
