"""Where does a tiny ViT fit its teacher? Dense distillation's cosine on thing cells and on stuff cells.

::

    python benchmarks/studies/distill_fit.py --student runs/vit-distill2-s250.safetensors \
        --json benchmarks/results/tiny_vit_distill/fit.json

For held-out parts-world images (``mvpseg.world.evaluate``'s split): the teacher's dense MaskCLIP features
(``mvpseg-tiny-parts``, 8x8 cells) against the student ViT's tokens before its last block, through ``ln_post``
and ``proj``, average-pooled to the teacher's grid (the term ``--distill-dense-weight`` trains,
``mvpseg.world.pretrain``), and its own MaskCLIP features pooled the same way. Cells are thing or stuff cells
by their majority label. If the student fits the stuff cells and not the thing cells, the mean distillation
loss hides a failure on exactly what it was meant to teach.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F

import mvpseg
from mvpseg.world.drawing import scene_rng
from mvpseg.world.evaluate import EVAL_SPLIT, load_tiny_clip
from mvpseg.world.pretrain import penultimate_map, to_model_input
from mvpseg.world.registry import get_world


def _penultimate(visual: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The ViT's tokens before its last block through ln_post and proj, as a map: (B, D, h, w)."""
    captured: list[torch.Tensor] = []
    hook = visual.transformer.resblocks[-2].register_forward_hook(lambda m, i, o: captured.append(o))
    with torch.no_grad():
        visual(images)
    hook.remove()
    return penultimate_map(visual, captured[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--student", default=None, help="ViT weights (safetensors); default the shipped ViT's")
    parser.add_argument("--num-images", type=int, default=100)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    world = get_world("parts")
    teacher = mvpseg.load_clip("mvpseg-tiny-parts", "mvpseg").model
    student = (load_tiny_clip(args.student, "mvpseg-tiny-parts-vit") if args.student
               else mvpseg.load_clip("mvpseg-tiny-parts-vit", "mvpseg").model)
    scenes = [world.generate_scene(scene_rng(0, EVAL_SPLIT, i), size=256) for i in range(args.num_images)]
    images = to_model_input(np.stack([s.image for s in scenes]))
    labels = torch.from_numpy(np.stack([s.label for s in scenes]).astype(np.int64))  # (N, 256, 256)
    things = len(world.THING_CLASSES)
    result: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        target = F.normalize(mvpseg.dense_features(teacher, images).float(), dim=1)  # (N, D, 8, 8)
        grid = target.shape[-2:]
        cells = labels.view(len(scenes), grid[0], 256 // grid[0], grid[1], 256 // grid[1])
        cells = cells.permute(0, 1, 3, 2, 4).reshape(len(scenes), grid[0], grid[1], -1)  # (N, 8, 8, 32*32)
        majority = torch.mode(cells, dim=-1).values  # (N, 8, 8)
        is_thing = majority < things
        for name, student_map in (("penultimate", _penultimate(student.visual, images)),
                                  ("maskclip", mvpseg.dense_features(student, images))):
            pooled = F.normalize(F.adaptive_avg_pool2d(student_map.float(), grid), dim=1)
            cosine = (pooled * target).sum(dim=1)  # (N, 8, 8)
            result[name] = {"thing_cells": float(cosine[is_thing].mean()), "stuff_cells": float(cosine[~is_thing].mean()),
                            "all_cells": float(cosine.mean()), "thing_share": float(is_thing.float().mean())}
            print(name, json.dumps(result[name]), flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"student": args.student or "mvpseg-tiny-parts-vit (shipped)", **result}, handle, indent=1)


if __name__ == "__main__":
    main()
