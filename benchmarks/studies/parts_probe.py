"""How much part identity do the parts world's dense CLIP features hold? A linear probe on thing pixels.

::

    python benchmarks/studies/parts_probe.py --world demo-out/world --num-train 400 --num-test 150 \
        --json benchmarks/results/parts_probe.json
    python benchmarks/studies/parts_probe.py --world runs/vit-modes/seed-0/world --clip mvpseg-tiny-parts-vit \
        --vit-modes vanilla maskclip value qq csa naclip resclip scclip --json benchmarks/results/parts_probe_vit_modes.json

Features: :func:`mvpseg.dense_features` of the shipped ``mvpseg-tiny-parts`` (8x8 grid on 256-px images; or
``--clip`` another, a ViT in each of ``--vit-modes``),
upsampled bilinearly to 64x64 and read at the pixels of things. Two linear probes (Adam, cross-entropy) on
the same pixels: the part kind (8 classes) and the thing class (12). Accuracy on held-out images. If the
part probe is near chance, no prompt can single out a part whatever its loss.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F

import mvpseg
from mvpseg.data import build_dataset, read_label
from mvpseg.world import parts


def _pixels(clip, dataset, indices, grid=64, vit_mode="maskclip"):
    features, kinds, things = [], [], []
    for index in indices:
        image, label = dataset.load(index)
        part = read_label(dataset.label_paths[index].parent.parent / "SegmentationPart" / dataset.label_paths[index].name)
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255)  # (1, 3, H, W)
        x = (x - torch.tensor(clip.mean).view(1, 3, 1, 1)) / torch.tensor(clip.std).view(1, 3, 1, 1)
        with torch.no_grad():
            dense = F.normalize(mvpseg.dense_features(clip.model, x, vit_mode).float(), dim=1)  # (1, D, h, w)
        dense = F.interpolate(dense, size=(grid, grid), mode="bilinear", align_corners=False)[0]  # (D, g, g)
        step = label.shape[0] // grid
        lab, par = label[step // 2 :: step, step // 2 :: step], part[step // 2 :: step, step // 2 :: step]
        inside = par != 255
        features.append(dense[:, torch.from_numpy(inside)].t())  # (N, D)
        kinds.append(par[inside])
        things.append(lab[inside])
    return torch.cat(features), np.concatenate(kinds), np.concatenate(things)


def _probe(train_x, train_y, test_x, test_y, classes, steps=400):
    torch.manual_seed(0)
    weight = torch.zeros(classes, train_x.shape[1], requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=0.05)
    target = torch.from_numpy(train_y.astype(np.int64))
    for _ in range(steps):
        loss = F.cross_entropy(10 * train_x @ weight.t() + bias, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    predicted = (10 * test_x @ weight.t() + bias).argmax(dim=1).numpy()
    return float((predicted == test_y).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", required=True, help="a parts world written by mvpseg demo --world parts")
    parser.add_argument("--num-train", type=int, default=400)
    parser.add_argument("--num-test", type=int, default=150)
    parser.add_argument("--json", default=None)
    parser.add_argument("--clip", default="mvpseg-tiny-parts", help="a shipped tiny CLIP (its own weights)")
    parser.add_argument("--vit-modes", nargs="+", default=["maskclip"], help="a ViT's dense modes, one probe each")
    args = parser.parse_args()
    clip = mvpseg.load_clip(args.clip, "mvpseg")
    train = build_dataset("custom", args.world, "train")
    test = build_dataset("custom", args.world, "val")
    results = {}
    for mode in args.vit_modes:
        tx, tk, tt = _pixels(clip, train, range(args.num_train), vit_mode=mode)
        vx, vk, vt = _pixels(clip, test, range(min(args.num_test, len(test))), vit_mode=mode)
        results[mode] = {
            "part_probe_accuracy": _probe(tx, tk, vx, vk, len(parts.PART_KINDS)),
            "part_chance": float(np.bincount(vk).max() / len(vk)),
            "thing_probe_accuracy": _probe(tx, tt, vx, vt, len(parts.THING_CLASSES)),
            "thing_chance": float(np.bincount(vt).max() / len(vt)),
            "train_pixels": int(len(tk)), "test_pixels": int(len(vk)),
        }
        print(mode, json.dumps(results[mode]), flush=True)
    result = results[args.vit_modes[0]] if len(args.vit_modes) == 1 else {"clip": args.clip, "modes": results}
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
