"""MVP-SEG's losses: pixel cross-entropy, GPR's presence loss, and the Orthogonal Constraint Loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import LossWeights
from .model import MVPSegOutput

__all__ = ["LossWeights", "labelled_weight", "segmentation_loss", "presence_targets", "presence_loss", "orthogonality_loss", "total_loss"]


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
    logits = output.final_logits(size=tuple(labels.shape[-2:]))  # (B, C, H, W)
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


def total_loss(output: MVPSegOutput, labels: torch.Tensor, mean_contexts: torch.Tensor | None,
               weights: LossWeights, ignore_index: int = 255, class_weights: torch.Tensor | None = None,
               seg_normalizer: float | torch.Tensor | None = None,
               known_presence: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The weighted sum ``l1 L_seg + l2 L_cls + l3 L_OC`` and its parts.

    Args:
        output: the model's output.
        labels: (B, H, W) int64 labels.
        mean_contexts: (K, W) from :meth:`PromptLearner.mean_contexts`, or None (no OC term).
        weights: the loss weights; a zero weight skips its term.
        ignore_index: label value that is skipped.
        class_weights: optional (C,) pixel weights for L_seg.
        seg_normalizer: see :func:`segmentation_loss`.
        known_presence: (C,) bool, the classes L_cls is taken over (see :func:`presence_loss`).

    Returns:
        {"loss": total, "seg": L_seg, "cls": L_cls, "oc": L_OC} (skipped terms are 0).
    """
    zero = output.fused_logits.new_zeros(())
    seg = segmentation_loss(output, labels, ignore_index, class_weights, seg_normalizer) if weights.seg else zero
    cls = (presence_loss(output, labels, ignore_index, known_presence)
           if weights.cls and output.presence_logits is not None else zero)
    oc = orthogonality_loss(mean_contexts) if weights.oc and mean_contexts is not None else zero
    return {"loss": weights.seg * seg + weights.cls * cls + weights.oc * oc, "seg": seg, "cls": cls, "oc": oc}
