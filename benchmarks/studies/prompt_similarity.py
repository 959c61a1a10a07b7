"""How alike are a demo's learned prompts? Their contexts (what OCLoss acts on) and their class embeddings.

::

    python benchmarks/studies/prompt_similarity.py demo-out [--rows k-prompts k-prompts+ocloss mvp-seg]

For each row and prompt seed of an ``mvpseg demo`` output folder (any world; the CLIP is the one the
prompts record): the mean |cos| between the segmentation prompts' mean context vectors, and the mean cosine
between two prompts' class embeddings (over the world's classes), averaged over prompt pairs and seeds.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch

from mvpseg.build import load_mvpseg
from mvpseg.clip import load_clip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="an mvpseg demo output folder")
    parser.add_argument("--rows", nargs="+", default=["k-prompts", "k-prompts+ocloss", "mvp-seg"])
    args = parser.parse_args()
    out = Path(args.out)
    info = json.loads((out / "run_info.json").read_text())["config"]
    clip = load_clip(info["clip"], info["clip_weights"])
    names = (out / "world" / "class_names.txt").read_text().split()
    for row in args.rows:
        contexts, embeddings = [], []
        for path in sorted((out / "runs" / row).glob("seed-*/prompts.safetensors")):
            model = load_mvpseg(path, clip)
            with torch.no_grad():
                mean = torch.nn.functional.normalize(model.prompts.mean_contexts().float(), dim=-1)  # (K, W)
                text = model.text_embeddings(names)[1:]  # (K, C, D): the segmentation prompts
            for a, b in itertools.combinations(range(mean.shape[0]), 2):
                contexts.append((mean[a] @ mean[b]).abs().item())
                embeddings.append((text[a] * text[b]).sum(-1).mean().item())
        print(f"{row}: context |cos| {sum(contexts) / len(contexts):.3f}  "
              f"class-embedding cos {sum(embeddings) / len(embeddings):.3f}")


if __name__ == "__main__":
    main()
