"""Class probabilities and labels at every pixel, as the training-free peers score them.

mvpseg's own protocol upsamples log-scores to labels block by block (:mod:`mvpseg.upsample`). The peers'
protocols (:mod:`mvpseg.protocols`) hold every name's map at the image's size instead, and from it: PAMR
(:mod:`mvpseg.pamr`), a logit scale, a synonym rule, ``area_thd`` and ``prob_thd``. These are those steps, on
tensors; :meth:`mvpseg.Segmenter.probabilities` makes the maps and :meth:`mvpseg.Segmenter.labels` calls
:func:`threshold_labels`.
"""

from __future__ import annotations

import torch

from .config import InferenceConfig
from .pamr import pamr
from .vocabulary import Vocabulary, max_over_names

__all__ = ["class_probabilities", "refined_probabilities", "threshold_labels"]


def class_probabilities(logits: torch.Tensor, vocabulary: Vocabulary, rule: str = "max-logit") -> torch.Tensor:
    """Per-class probabilities (C, ...) from the names' logits (N, ...), by a synonym rule.

    Args:
        logits: (N, ...) one entry per name of ``vocabulary.names`` (scaled cosines).
        vocabulary: the classes and their names.
        rule: "max-logit": each class takes its best name's logit, then a softmax over the classes (mvpseg);
            "softmax-max": a softmax over every name of every class, a name counted as often as classes list it,
            then each class takes its best name's probability (the peers' ``postprocess_result``).

    Returns:
        (C, ...) float32.
    """
    if rule == "max-logit":
        return max_over_names(logits.float(), vocabulary, dim=0).softmax(dim=0)
    if rule != "softmax-max":
        raise ValueError(f"synonym rule must be max-logit or softmax-max, not {rule!r}")
    counts = torch.zeros(len(vocabulary.names), device=logits.device)
    for group in vocabulary.groups:
        counts[list(group)] += 1  # the peers' queries: one per (class, name)
    shape = (-1,) + (1,) * (logits.ndim - 1)
    log_total = torch.logsumexp(logits.float() + counts.log().view(shape), dim=0, keepdim=True)  # (1, ...)
    return max_over_names((logits.float() - log_total).exp(), vocabulary, dim=0)


def refined_probabilities(maps: torch.Tensor, vocabulary: Vocabulary, scale: float | None, config: InferenceConfig,
                          guide: torch.Tensor | None = None) -> torch.Tensor:
    """(C, H, W) class probabilities of maps at an image's size, refined by PAMR when ``config`` asks for it.

    Args:
        maps: (1, N, H, W) every name's cosine map (the template classifier), or (1, C, H, W) the final log-scores of
            learned prompts or a student.
        vocabulary: the classes and their names.
        scale: the logit scale of cosine maps; None: the maps are log-scores, their probabilities ``exp``.
        config: ``pamr_steps``, ``pamr_dilations`` and ``synonym_rule``.
        guide: (1, 3, H, W) the image PAMR follows (needed when ``config.pamr_steps``).
    """
    if config.pamr_steps:
        if guide is None:
            raise ValueError("PAMR needs the image it follows")
        maps = pamr(guide, maps, steps=config.pamr_steps, dilations=config.pamr_dilations)
    if scale is None:
        return maps[0].exp()
    return class_probabilities(maps[0] * scale, vocabulary, config.synonym_rule)


def threshold_labels(probabilities: torch.Tensor, area_thd: float = 0.0, prob_thd: float = 0.0) -> torch.Tensor:
    """(H, W) int32 labels from class probabilities (C, H, W), as the peers' ``postprocess_result`` makes them.

    With ``area_thd``, the classes other than 0 whose argmax area is at most that share of those classes' pixels
    are zeroed in ``probabilities`` (in place; SCLIP's "area_pred"); then the argmax; pixels whose best probability
    is below ``prob_thd`` become class 0.
    """
    if area_thd > 0 and probabilities.shape[0] > 1:
        areas = torch.bincount(probabilities.argmax(dim=0).flatten(), minlength=probabilities.shape[0])[1:]
        probabilities[1:][areas <= area_thd * areas.sum()] = 0.0  # (C - 1,) classes dropped
    best, labels = probabilities.max(dim=0)
    if prob_thd > 0:
        labels[best < prob_thd] = 0
    return labels.to(torch.int32)
