"""The demo's MVP-SEG and MVP-SEG+ rows for one world seed, without the rest of the ablation.

It writes the world of ``--seed``, trains the ``mvp-seg`` prompts of that seed exactly as ``mvpseg demo``
does (:func:`mvpseg.world.demo.row_train_config`), and runs the demo's MVP-SEG+ row
(:func:`mvpseg.world.demo.student_row`: their pseudo-labels, then the student) once per ``--head`` (mvpseg's
head is the demo's; MaskCLIP+'s is measured beside it), and prints and writes every row.

    OMP_NUM_THREADS=2 python benchmarks/studies/demo_student_rows.py --seed 0 --out /tmp/rows-0 --heads mvpseg maskclip

The published figures: ``benchmarks/results/demo_student_rows_mvpseg_head.json`` and
``benchmarks/results/demo_student_rows_maskclip_head.json`` (each seed's ``OUT/rows.json`` gathered).

The demo's MVP-SEG row is the mean over 3 prompt seeds; the MVP-SEG row here is the seed's own, the one
that teaches the student (the demo's MVP-SEG+ row uses it too).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from mvpseg.build import load_mvpseg
from mvpseg.clip import load_clip
from mvpseg.config import DemoConfig, InferenceConfig
from mvpseg.data import build_dataset
from mvpseg.evaluate import evaluate
from mvpseg.files import write_text
from mvpseg.inference import Segmenter
from mvpseg.train import train
from mvpseg.world.demo import row_train_config, student_row, student_transfer_config
from mvpseg.world.layout import write_world

KEYS = ("miou_seen", "miou_unseen", "hiou", "miou")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="the world seed (DemoConfig.seed)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--reuse", action="store_true",
                        help="evaluate what an earlier (interrupted) run of this script left in --out: the world, "
                             "the prompts and any finished student are read, not made again")
    parser.add_argument("--heads", nargs="+", default=["mvpseg"], choices=("mvpseg", "maskclip"),
                        help="student heads to train (mvpseg: the demo's)")
    args = parser.parse_args()
    config = DemoConfig(out=args.out, seed=args.seed)
    out = Path(args.out)
    tic = time.perf_counter()
    world = out / "world"
    if not (args.reuse and (world / "unseen.txt").is_file()):
        world = write_world(world, config.num_train, config.num_val, seed=config.seed, progress=False)
    val = build_dataset("custom", world, "val")
    clip = load_clip(config.clip, config.clip_weights)
    inference = InferenceConfig(short_side=config.short_side, mode="whole")
    rows = {}
    prompts = out / "runs" / "mvp-seg" / f"seed-{config.seed}" / "prompts.safetensors"
    if not (args.reuse and prompts.is_file()):
        prompts = train(row_train_config(config, world, "mvp-seg", config.seed, out), progress=False)
    rows["mvp-seg"] = evaluate(Segmenter(load_mvpseg(prompts, clip), inference, device="cpu"), val, progress=False)
    base = student_transfer_config(config, world, out)
    labelled = args.reuse and (Path(base.pseudo_labels) / "meta.json").is_file()
    for head in args.heads:
        student = base.student if head == "mvpseg" else replace(base.student, head="maskclip", head_channels=None)
        result = student_row(config, world, clip, val, out, prompts=prompts, student=student,
                             run_out=f"{base.out}-{head}", pseudo_labels=not labelled, reuse=args.reuse)
        labelled = True  # one teacher: its pseudo-labels serve every head
        rows[f"mvp-seg+ ({head} head)"] = {**result.figures, "train_seconds": result.train_seconds}
    results = {name: {key: metrics[key] for key in (*KEYS, "train_seconds") if key in metrics}
               for name, metrics in rows.items()}
    info = {"seed": config.seed, "seconds": round(time.perf_counter() - tic, 1), "threads": torch.get_num_threads(),
            "rows": results}
    write_text(out / "rows.json", json.dumps(info, indent=2) + "\n")
    for name, values in results.items():
        print(f"seed {config.seed} {name}: mIoU(S) {values['miou_seen']:.1f}  mIoU(U) {values['miou_unseen']:.1f}  "
              f"hIoU {values['hiou']:.1f}", flush=True)


if __name__ == "__main__":
    main()
