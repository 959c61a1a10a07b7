"""MVP-SEG's losses: pixel cross-entropy, GPR's presence loss, and the Orthogonal Constraint Loss.

Beyond the paper, off by default (training only; inference never sees them): the view-assignment loss
(a Sinkhorn plan splits each thing's cells between the K prompts, ProtoSeg-style) and a map-overlap
penalty between the prompts' centred maps inside each thing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import LossWeights
from .model import MVPSegOutput

__all__ = ["LossWeights", "labelled_weight", "segmentation_loss", "presence_targets", "presence_loss", "orthogonality_loss",
           "cell_weights", "sinkhorn_plan", "view_assignment_loss", "overlap_penalty", "total_loss"]


def segmentation_loss(output: MVPSegOutput, labels: torch.Tensor, ignore_index: int = 255,
                      class_weights: torch.Tensor | None = None, normalizer: float | torch.Tensor | None = None
                      ) -> torch.Tensor:
    """L_seg: pixel cross-entropy of the final map ``softmax_c(fused) * g`` against the labels.

    The fused logits are upsampled (bilinear) to the label size first. The final map is
    renormalised over classes, so lowering ``g`` of an absent class helps the true one.

    Args:
        output: the model's output at feature resolution.
        labels: (B, H, W) int64 class indices, ``ignore_index`` for unlabelled pixels.
        ignore_index: label value that is skipped.
        class_weights: optional (C,) per-class weights (class-balanced training).
        normalizer: divide the summed pixel losses by this instead of the (weighted) number of
            labelled pixels; data-parallel training passes the count over all processes.

    Returns:
        Scalar loss (mean over labelled pixels by default); 0 when no pixel is labelled.
    """
    logits = output.final_logits(size=(labels.shape[-2], labels.shape[-1]))  # (B, C, H, W)
    pixel_losses = F.cross_entropy(logits, labels, weight=class_weights, ignore_index=ignore_index, reduction="none")
    if normalizer is None:
        normalizer = labelled_weight(labels, ignore_index, class_weights)
    return pixel_losses.sum() / torch.as_tensor(normalizer, dtype=pixel_losses.dtype).clamp_min(1e-12)


def labelled_weight(labels: torch.Tensor, ignore_index: int = 255,
                    class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """The number of labelled pixels, or their summed class weights: L_seg's default normalizer."""
    valid = labels != ignore_index
    if class_weights is None:
        return valid.sum().float()
    return class_weights[labels[valid]].sum().float()


def presence_targets(labels: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """(B, C) float: 1 where class c has at least one pixel in image b's labels."""
    flat = labels.flatten(1)  # (B, H, W) -> (B, H*W)
    valid = flat != ignore_index
    targets = torch.zeros(labels.shape[0], num_classes, device=labels.device)
    rows = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(flat)
    targets[rows[valid], flat[valid]] = 1.0
    return targets


def presence_loss(output: MVPSegOutput, labels: torch.Tensor, ignore_index: int = 255,
                  known: torch.Tensor | None = None) -> torch.Tensor:
    """L_cls: binary cross-entropy between GPR's scores ``g`` and each class's image-level presence.

    A class's presence is read from the labels, so it is known only for classes whose pixels are
    labelled. In the transductive setting the unseen names are in the vocabulary but their pixels are
    unlabelled: "no pixel labelled" does not mean "absent", and training those classes towards 0 would
    teach GPR to switch them off. ``known`` leaves them out.

    Args:
        output: the model's output (must carry GPR presence logits).
        labels: (B, H, W) int64 class indices.
        ignore_index: label value that is skipped.
        known: (C,) bool, the classes whose presence the labels tell; default all.

    Returns:
        Scalar loss, mean over images and known classes.
    """
    if output.presence_logits is None:
        raise ValueError("the presence loss needs GPR (use_gpr=True)")
    logits = output.presence_logits.float()  # (B, C)
    targets = presence_targets(labels, logits.shape[1], ignore_index)
    if known is None:
        return F.binary_cross_entropy_with_logits(logits, targets)
    losses = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")  # (B, C)
    mask = known.to(device=losses.device, dtype=losses.dtype)[None].expand_as(losses)
    return (losses * mask).sum() / mask.sum().clamp_min(1.0)


def orthogonality_loss(mean_contexts: torch.Tensor) -> torch.Tensor:
    """L_OC = sum over i < j of |cos(p'_i, p'_j)|, p'_i the mean context vector of segmentation prompt i.

    Args:
        mean_contexts: (K, W) one mean context vector per segmentation prompt.

    Returns:
        Scalar loss; 0 when K = 1.
    """
    unit = F.normalize(mean_contexts.float(), dim=-1)
    cosines = unit @ unit.T  # (K, K)
    pairs = torch.triu_indices(len(unit), len(unit), offset=1, device=unit.device)
    return cosines[pairs[0], pairs[1]].abs().sum()


def cell_weights(labels: torch.Tensor, grid: tuple[int, int], num_classes: int) -> torch.Tensor:
    """The fraction of each feature cell that each class covers: (B, H, W) labels -> (B, C, h, w).

    Ignored pixels count for no class (a cell half ignored and half class c has weight 0.5 for c).
    """
    onehot = F.one_hot(labels.clamp(0, num_classes), num_classes + 1)  # ignore (>= C) -> column C
    onehot = onehot[..., :num_classes].permute(0, 3, 1, 2).float()  # (B, H, W, C) -> (B, C, H, W)
    return F.adaptive_avg_pool2d(onehot, grid)  # (B, C, h, w)


@torch.no_grad()
def sinkhorn_plan(scores: torch.Tensor, weights: torch.Tensor, epsilon: float = 0.01,
                  iterations: int = 3) -> torch.Tensor:
    """Entropic optimal transport of cells to prompts, batched: cost ``1 - S``, marginals ``1/K`` and ``w / sum w``.

    The plan is ``Q = diag(u) exp(S / epsilon) diag(v)`` (the constant 1 of the cost cancels), found by
    normalising the cells once, then alternating the two normalisations ``iterations`` times, prompts first
    and cells last (ProtoSeg's order), so that each cell's column sums exactly to its weight and each
    prompt's row to about ``1/K``; anything all prompts share at a cell is without effect on it.

    Args:
        scores: (G, K, N) the prompts' cosines at N cells, for G groups (one thing in one crop each).
        weights: (G, N) non-negative cell weights; cells of weight 0 get no mass.
        epsilon: entropic regularisation (smaller: a harder plan).
        iterations: Sinkhorn iterations.

    Returns:
        (G, K, N) float32 plan; every group's entries sum to 1. No gradient.
    """
    scores = scores.double()
    weights = weights.double().clamp_min(0.0)
    present = (weights > 0)[:, None, :]  # (G, 1, N)
    # exp((S - max) / epsilon) stays above 1e-300 in float64 for cosines (a spread of at most 2).
    logits = (scores - scores.amax(dim=(1, 2), keepdim=True)) / epsilon
    plan = logits.exp() * present
    rows = torch.full_like(plan[:, :, :1], 1.0 / scores.shape[1])  # (G, K, 1)
    columns = (weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-300))[:, None, :]  # (G, 1, N)
    tiny = 1e-300
    # Cells first: a map that every prompt shares (a factor per cell) is then gone before the first row step,
    # so the plan, like softmax_k, does not see it even after a few iterations.
    plan = plan * (columns / plan.sum(dim=1, keepdim=True).clamp_min(tiny))
    for _ in range(iterations):
        plan = plan * (rows / plan.sum(dim=2, keepdim=True).clamp_min(tiny))
        plan = plan * (columns / plan.sum(dim=1, keepdim=True).clamp_min(tiny))
    return plan.float()


def _thing_groups(output: MVPSegOutput, labels: torch.Tensor, classes: torch.Tensor | None,
                  ignore_index: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The segmentation prompts' cosines and the cell weights of every (image, class) present in the crop.

    Returns:
        scores (G, K, N) and weights (G, N), N = h*w cells; None when no class of ``classes`` is labelled.
    """
    maps = output.prompt_maps  # (B, P, C, h, w): learned prompts have the global one at index 0 (P = K + 1)
    segment = maps[:, 1:] if maps.shape[1] > 1 else maps  # (B, K, C, h, w)
    num_classes, h, w = segment.shape[2:]
    weights = cell_weights(labels, (h, w), num_classes)  # ignore_index (>= C) counts for no class
    if classes is not None:
        weights = weights * classes.to(weights.device, weights.dtype)[None, :, None, None]
    weights = weights.flatten(2)  # (B, C, h, w) -> (B, C, h*w)
    image, cls = (weights.sum(dim=2) > 0).nonzero(as_tuple=True)  # the G present (image, class) pairs
    if len(image) == 0:
        return None
    scores = segment.float().flatten(3)[image, :, cls]  # (B, K, C, h*w) -> (G, K, h*w)
    return scores, weights[image, cls]


def view_assignment_loss(output: MVPSegOutput, labels: torch.Tensor, tau1: torch.Tensor | float,
                         classes: torch.Tensor | None = None, epsilon: float = 0.01, iterations: int = 3,
                         ignore_index: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """L_views: each thing's cells, split between the K prompts by a Sinkhorn plan, supervise ``softmax_k``.

    For class c in image b, with ``w_x`` the fraction of cell x labelled c and ``S[k, x] = m_k^c(x)``, the
    plan ``Q`` of :func:`sinkhorn_plan` (no gradient) is normalised per cell to ``Q_hat[x, k]`` and
    ``L_views = sum_x w_x sum_k -Q_hat[x, k] log softmax_k(K tau1 S[:, x]) / sum_x w_x`` over every
    (b, c) together. ``softmax_k`` is blind to anything all prompts share (L_seg trains their sum), so the
    two terms do not fight. ``tau1`` enters as a constant: the term does not move the fusion's scale.

    Args:
        output: the model's output; its K segmentation prompts' maps are read.
        labels: (B, H, W) int64 labels.
        tau1: the fusion scale (detached here).
        classes: (C,) bool, the classes the term is taken over (default every labelled class).
        epsilon: the plan's entropic regularisation.
        iterations: Sinkhorn iterations.
        ignore_index: label value that is skipped.

    Returns:
        (loss, entropy): the scalar loss (0 when no class is present or K = 1) and the plan's mean row
        entropy ``-sum_k Q_hat[x, k] log Q_hat[x, k]`` weighted by ``w_x`` (log K: no split at all).
    """
    zero = output.fused_logits.new_zeros(())
    groups = _thing_groups(output, labels, classes, ignore_index)
    if groups is None or groups[0].shape[1] < 2:
        return zero, zero
    scores, weights = groups  # (G, K, N), (G, N)
    plan = sinkhorn_plan(scores.detach(), weights, epsilon, iterations)
    target = plan / plan.sum(dim=1, keepdim=True).clamp_min(1e-30)  # Q_hat: each cell's split over prompts
    scale = torch.as_tensor(tau1, dtype=scores.dtype, device=scores.device).detach() * scores.shape[1]
    log_split = (scale * scores).log_softmax(dim=1)  # (G, K, N)
    per_cell = -(target * log_split).sum(dim=1)  # (G, N)
    total = weights.sum().clamp_min(1e-12)
    entropy = -(target * target.clamp_min(1e-30).log()).sum(dim=1)
    return (weights * per_cell).sum() / total, ((weights * entropy).sum() / total).detach()


def overlap_penalty(output: MVPSegOutput, labels: torch.Tensor, classes: torch.Tensor | None = None,
                    ignore_index: int = 255) -> torch.Tensor:
    """The map-overlap penalty: the weighted cosine between two prompts' centred maps inside each thing.

    For class c in image b, each prompt's map is centred by its ``w``-weighted mean over the thing's cells
    (CLIP's cosines share a positive offset that would dominate otherwise), and
    ``cos_kl = sum_x w_x m~_k m~_l / sqrt(sum_x w_x m~_k^2 sum_x w_x m~_l^2)``; the penalty is the mean over
    prompt pairs, averaged over the (b, c) with the weight of their cells. Identical maps score 1, maps on
    complementary parts below 0.

    Returns:
        Scalar penalty; 0 when no class is present or K = 1.
    """
    zero = output.fused_logits.new_zeros(())
    groups = _thing_groups(output, labels, classes, ignore_index)
    if groups is None or groups[0].shape[1] < 2:
        return zero
    scores, weights = groups  # (G, K, N), (G, N)
    mass = weights.sum(dim=1)  # (G,)
    centred = scores - (scores * weights[:, None]).sum(dim=2, keepdim=True) / mass[:, None, None]
    gram = torch.einsum("gkn,gln->gkl", centred * weights[:, None], centred)  # (G, K, K) weighted covariances
    norm = gram.diagonal(dim1=1, dim2=2).clamp_min(1e-12).sqrt()  # (G, K)
    cosine = gram / (norm[:, :, None] * norm[:, None, :])
    pairs = torch.triu_indices(scores.shape[1], scores.shape[1], offset=1, device=scores.device)
    per_group = cosine[:, pairs[0], pairs[1]].mean(dim=1)  # (G,)
    return (mass * per_group).sum() / mass.sum()


def total_loss(output: MVPSegOutput, labels: torch.Tensor, mean_contexts: torch.Tensor | None,
               weights: LossWeights, ignore_index: int = 255, class_weights: torch.Tensor | None = None,
               seg_normalizer: float | torch.Tensor | None = None,
               known_presence: torch.Tensor | None = None, tau1: torch.Tensor | float | None = None,
               view_classes: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The weighted sum ``l1 L_seg + l2 L_cls + l3 L_OC`` (+ the view terms when on) and its parts.

    Args:
        output: the model's output.
        labels: (B, H, W) int64 labels.
        mean_contexts: (K, W) from :meth:`PromptLearner.mean_contexts`, or None (no OC term).
        weights: the loss weights; a zero weight skips its term.
        ignore_index: label value that is skipped.
        class_weights: optional (C,) pixel weights for L_seg.
        seg_normalizer: see :func:`segmentation_loss`.
        known_presence: (C,) bool, the classes L_cls is taken over (see :func:`presence_loss`).
        tau1: the fusion scale (the view-assignment loss reads the prompts' maps at it).
        view_classes: (C,) bool, the classes the view terms are taken over (default every labelled class).

    Returns:
        {"loss": total, "seg": L_seg, "cls": L_cls, "oc": L_OC} (skipped terms are 0); with ``weights.views``
        also "views" and "views_entropy" (the plan's mean row entropy), with ``weights.overlap`` "overlap".
    """
    zero = output.fused_logits.new_zeros(())
    seg = segmentation_loss(output, labels, ignore_index, class_weights, seg_normalizer) if weights.seg else zero
    cls = (presence_loss(output, labels, ignore_index, known_presence)
           if weights.cls and output.presence_logits is not None else zero)
    oc = orthogonality_loss(mean_contexts) if weights.oc and mean_contexts is not None else zero
    losses = {"loss": weights.seg * seg + weights.cls * cls + weights.oc * oc, "seg": seg, "cls": cls, "oc": oc}
    # Beyond the paper: added only when switched on, so that a run without them is the paper's to the bit.
    if weights.views:
        if tau1 is None:
            raise ValueError("the view-assignment loss needs the fusion scale tau1")
        views, entropy = view_assignment_loss(output, labels, tau1, view_classes, weights.views_epsilon,
                                              weights.views_iterations, ignore_index)
        losses.update(loss=losses["loss"] + weights.views * views, views=views, views_entropy=entropy)
    if weights.overlap:
        overlap = overlap_penalty(output, labels, view_classes, ignore_index)
        losses.update(loss=losses["loss"] + weights.overlap * overlap, overlap=overlap)
    return losses
