"""How good is a tiny CLIP's representation of the world? Image level, dense, and a linear-probe ceiling.

::

    python -m mvpseg.world.evaluate --weights runs/tiny-clip/mvpseg-tiny.safetensors

- **Zero-shot, image level** (CLIP's own pooled embedding vs. template text embeddings): presence
  AUC per thing class (a thing is present when it covers at least 1.5 % of the image), top-1
  accuracy over stuff classes (the largest stuff region is the answer).
- **Dense, zero-shot** (MaskCLIP features from :func:`mvpseg.dense.dense_features` matched to the
  same text embeddings, argmax over all classes, logits upsampled to the label size): IoU per
  class; and the presence AUC of spatially averaged dense features (does identity survive
  without the attention pool?).
- **Linear probe** on the dense features, trained with every class's masks on other images: the
  ceiling any text-side prompt could reach with these features.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from mvpseg.dense import dense_features
from mvpseg.metrics import ConfusionMatrix
from mvpseg.prompts import TEMPLATES, template_embeddings
from mvpseg.world.drawing import scene_rng
from mvpseg.world.pretrain import build_tiny_clip, model_name, to_model_input
from mvpseg.world.registry import get_world

__all__ = ["evaluate_tiny_clip", "load_tiny_clip", "presence_auc", "WORLD_TEMPLATES", "EVAL_SPLIT", "PROBE_SPLIT"]

EVAL_SPLIT = 3  # scene_rng streams of held-out evaluation images and of linear-probe training images
PROBE_SPLIT = 4
#: Templates in the style of the pretraining captions.
WORLD_TEMPLATES: tuple[str, ...] = ("{}.", "a photo of {}.", "a picture of {}.", "there is {}.", "an image with {}.")
_PRESENT_FRACTION = 0.015


def load_tiny_clip(weights: str | Path, model: str = "mvpseg-tiny") -> torch.nn.Module:
    """A tiny CLIP with weights from a safetensors state dict, in eval mode, in float32."""
    clip = build_tiny_clip(model)
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(weights)).items()}
    clip.load_state_dict(state, strict=True)
    return clip.eval()


def presence_auc(scores: np.ndarray, present: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` (N,) for binary labels ``present`` (N,); NaN if one-sided."""
    positives, negatives = int(present.sum()), int((~present).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = np.empty(len(scores))
    ranks[np.argsort(scores, kind="mergesort")] = np.arange(1, len(scores) + 1)
    return float((ranks[present].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _iou(prediction: np.ndarray, label: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-class IoU of predicted label maps (N, H, W) against the truth, NaN for a class absent from both."""
    matrix = ConfusionMatrix(num_classes)
    matrix.update(torch.from_numpy(prediction.astype(np.int64)), torch.from_numpy(label.astype(np.int64)))
    return np.array([np.nan if value is None else value for value in matrix.iou()])


def _scenes(seed: int, split: int, count: int, size: int, world: str = "patterns") -> tuple[np.ndarray, np.ndarray]:
    generate_scene = get_world(world).generate_scene
    scenes = [generate_scene(scene_rng(seed, split, i), size=size) for i in range(count)]
    return np.stack([s.image for s in scenes]), np.stack([s.label for s in scenes])


@torch.no_grad()
def _features(clip: open_clip.CLIP, images: np.ndarray, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled (N, D) and dense (N, D, h, w) features, both L2-normalised along D."""
    pooled, dense = [], []
    for start in range(0, len(images), batch_size):
        x = to_model_input(images[start : start + batch_size])
        pooled.append(F.normalize(clip.encode_image(x).float(), dim=-1))
        dense.append(F.normalize(dense_features(clip, x).float(), dim=1))
    return torch.cat(pooled), torch.cat(dense)


def _dense_prediction(dense: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, size: int) -> np.ndarray:
    """Argmax labels (N, H, W) of per-location logits ``<dense, weight> + bias`` upsampled to ``size``."""
    out = []
    for start in range(0, len(dense), 64):
        logits = torch.einsum("bdhw,cd->bchw", dense[start : start + 64], weight)  # (B, C, h, w)
        if bias is not None:
            logits = logits + bias.view(1, -1, 1, 1)
        logits = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)
        out.append(logits.argmax(dim=1).numpy().astype(np.uint8))
    return np.concatenate(out)


def _train_probe(dense: torch.Tensor, labels: np.ndarray, num_classes: int, steps: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A linear classifier (C, D) + (C,) on normalised dense features, pixel cross-entropy, class-balanced."""
    grid = 32
    features = F.interpolate(dense, size=(grid, grid), mode="bilinear", align_corners=False)  # (N, D, g, g)
    features = features.permute(0, 2, 3, 1).reshape(-1, dense.shape[1])  # (N, D, g, g) -> (N*g*g, D)
    stride = labels.shape[-1] // grid
    targets = torch.from_numpy(labels[:, stride // 2 :: stride, stride // 2 :: stride].astype(np.int64)).reshape(-1)
    frequency = torch.bincount(targets, minlength=num_classes).float()
    class_weight = torch.where(frequency > 0, frequency.sum() / (num_classes * frequency.clamp(min=1)), 0.0)
    generator = torch.Generator().manual_seed(seed)
    weight = torch.zeros(num_classes, dense.shape[1], requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=0.05)
    for _ in range(steps):
        pick = torch.randint(0, len(targets), (8192,), generator=generator)
        loss = F.cross_entropy(features[pick] @ weight.t() * 10 + bias, targets[pick], weight=class_weight)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return weight.detach() * 10, bias.detach()


def evaluate_tiny_clip(
    clip: torch.nn.Module,
    tokenizer: Callable[..., torch.Tensor],
    num_images: int = 500,
    num_probe_images: int = 500,
    seed: int = 0,
    image_size: int | None = None,
    templates: Sequence[str] = TEMPLATES,
    probe_steps: int = 300,
    world: str = "patterns",
) -> dict:
    """Zero-shot (image and dense) and linear-probe quality of a CLIP on held-out world images.

    Args:
        clip: an open_clip CLIP (eval mode).
        tokenizer: its tokenizer.
        num_images: held-out evaluation images (drawn from ``scene_rng(seed, 3, i)``).
        num_probe_images: images to train the linear probe on (``scene_rng(seed, 4, i)``).
        seed: world seed of those images.
        image_size: image side, pixels (default: the world's).
        templates: text templates averaged into class embeddings (default MaskCLIP's 85).
        probe_steps: Adam steps of the linear probe.
        world: the world's name (:data:`mvpseg.world.registry.WORLDS`).

    Returns:
        ``{"classes": {name: {...}}, "summary": {...}}`` with per-class ``auc`` (things: presence
        AUC of the pooled embedding; stuff too), ``stuff_top1`` (stuff), ``dense_auc`` (presence AUC
        of averaged dense features), ``dense_iou`` and ``probe_iou`` (IoU in [0, 1]), and means.
    """
    module = get_world(world)
    CLASS_NAMES, UNSEEN_CLASSES = module.CLASS_NAMES, module.UNSEEN_CLASSES  # noqa: N806
    image_size = image_size or module.IMAGE_SIZE
    num_classes = len(CLASS_NAMES)
    num_things = len(module.THING_CLASSES)
    images, labels = _scenes(seed, EVAL_SPLIT, num_images, image_size, world)
    text = template_embeddings(clip, tokenizer, CLASS_NAMES, templates=templates)  # (C, D)
    pooled, dense = _features(clip, images)
    scores = (pooled @ text.t()).numpy()  # (N, C)
    dense_scores = (F.normalize(dense.mean(dim=(2, 3)), dim=-1) @ text.t()).numpy()  # (N, C)
    areas = np.stack([np.bincount(lab.ravel(), minlength=num_classes) for lab in labels]) / labels[0].size  # (N, C)
    present = areas >= _PRESENT_FRACTION
    largest_stuff = areas[:, num_things:].argmax(axis=1)
    stuff_hit = scores[:, num_things:].argmax(axis=1) == largest_stuff

    prediction = _dense_prediction(dense, text, None, image_size)
    dense_iou = _iou(prediction, labels, num_classes)
    # among pixels of things predicted as some thing: how often the right one
    thing_pixels = labels < num_things
    predicted_thing = prediction < num_things
    both = thing_pixels & predicted_thing
    identity = float((prediction[both] == labels[both]).mean()) if both.any() else 0.0

    probe_images, probe_labels = _scenes(seed, PROBE_SPLIT, num_probe_images, image_size, world)
    _, probe_dense = _features(clip, probe_images)
    weight, bias = _train_probe(probe_dense, probe_labels, num_classes, probe_steps, seed)
    probe_iou = _iou(_dense_prediction(dense, weight, bias, image_size), labels, num_classes)

    classes: dict[str, dict[str, Any]] = {}
    for c, name in enumerate(CLASS_NAMES):
        entry: dict[str, Any] = {
            "kind": "thing" if c < num_things else "stuff",
            "unseen": name in UNSEEN_CLASSES,
            "auc": presence_auc(scores[:, c], present[:, c]),
            "dense_auc": presence_auc(dense_scores[:, c], present[:, c]),
            "dense_iou": float(dense_iou[c]),
            "probe_iou": float(probe_iou[c]),
        }
        if c >= num_things:
            mask = largest_stuff == c - num_things
            entry["stuff_top1"] = float(stuff_hit[mask].mean()) if mask.any() else float("nan")
        classes[name] = entry

    def mean(key: str, kind: str | None = None, unseen: bool | None = None) -> float:
        values = [e[key] for e in classes.values() if (kind is None or e["kind"] == kind)
                  and (unseen is None or e["unseen"] == unseen) and key in e]
        return float(np.nanmean(values))

    summary = {
        "thing_auc": mean("auc", "thing"),
        "thing_auc_unseen": mean("auc", "thing", True),
        "thing_dense_auc": mean("dense_auc", "thing"),
        "stuff_top1": float(stuff_hit.mean()),
        "dense_miou": mean("dense_iou"),
        "dense_miou_things": mean("dense_iou", "thing"),
        "dense_miou_stuff": mean("dense_iou", "stuff"),
        "dense_miou_unseen": mean("dense_iou", None, True),
        "dense_thing_identity": identity,
        "probe_miou": mean("probe_iou"),
        "probe_miou_things": mean("probe_iou", "thing"),
        "probe_miou_unseen": mean("probe_iou", None, True),
    }
    return {"classes": classes, "summary": summary}


def format_report(result: dict) -> str:
    """A plain-text table of :func:`evaluate_tiny_clip`'s result (percentages)."""
    lines = [f"{'class':<11}{'kind':<7}{'split':<8}{'AUC':>6}{'top1':>6}{'dAUC':>6}{'dIoU':>6}{'probe':>7}"]
    for name, e in result["classes"].items():
        top1 = e.get("stuff_top1", float("nan"))
        lines.append(f"{name:<11}{e['kind']:<7}{'unseen' if e['unseen'] else 'seen':<8}{100 * e['auc']:6.1f}"
                     f"{100 * top1:6.1f}{100 * e['dense_auc']:6.1f}{100 * e['dense_iou']:6.1f}{100 * e['probe_iou']:7.1f}")
    lines.append("")
    lines += [f"{k:<24}{100 * v:6.1f}" for k, v in result["summary"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: evaluate a tiny CLIP's weights and print the table."""
    parser = argparse.ArgumentParser(description="Evaluate a tiny CLIP on held-out world images.")
    parser.add_argument("--weights", required=True, help="safetensors state dict")
    parser.add_argument("--model", default="mvpseg-tiny", help="open_clip name or config JSON path")
    parser.add_argument("--num-images", type=int, default=500)
    parser.add_argument("--num-probe-images", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--world", default="patterns", help="the world: patterns or parts")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--world-templates", action="store_true", help="caption-style templates, not the 85")
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    clip = load_tiny_clip(args.weights, args.model)
    tokenizer = open_clip.get_tokenizer(model_name(args.model))
    result = evaluate_tiny_clip(clip, tokenizer, num_images=args.num_images, num_probe_images=args.num_probe_images,
                                seed=args.seed, world=args.world, templates=WORLD_TEMPLATES if args.world_templates else TEMPLATES)
    print(format_report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
