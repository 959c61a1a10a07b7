"""World accuracy of the MVP-SEG+ student at output stride 8 against 16: a short run of the demo's student.

The demo's MVP-SEG+ row (``mvpseg.world.demo.student_row``: DeepLabv2 on the tiny CLIP's
own trunk, AdamW, pseudo-labels written once, then self-training) is trained twice from the same
teacher, seed and data, once with the backbone at output stride 8 (the demo's) and once at 16, and
each student is evaluated on the world's val split (mIoU(S), mIoU(U), hIoU, as the demo). The teacher
is the shipped world prompts (the demo's MVP-SEG row, first seed, on the world of seed 0). Shorter
than the demo: fewer world images and steps (``--num-train``, ``--num-val``, ``--iters``).

    python benchmarks/studies/student_world.py [--num-train 600] [--num-val 100] [--iters 300] [--work /tmp/world]
        [--strides 8,16] [--reuse]

Writes ``benchmarks/results/student_world.json`` (rows of other strides already there are kept, so the two
strides may run as two processes; ``--reuse`` evaluates a finished student of the work folder again).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

from mvpseg.build import load_mvpseg
from mvpseg.clip import load_clip
from mvpseg.config import STUDENT_PRESETS, DemoConfig, InferenceConfig, StudentConfig
from mvpseg.data import build_dataset
from mvpseg.evaluate import evaluate
from mvpseg.inference import Segmenter
from mvpseg.world.demo import student_row, student_transfer_config
from mvpseg.world.layout import write_world
from mvpseg.world.prompts_asset import WORLD_PROMPTS

RESULTS = Path(__file__).resolve().parent.parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-train", type=int, default=600)
    parser.add_argument("--num-val", type=int, default=100)
    parser.add_argument("--iters", type=int, default=300, help="student steps (self-training from 3/4 of them)")
    parser.add_argument("--work", default="/tmp/mvpseg-student-world")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=str(RESULTS / "student_world.json"))
    parser.add_argument("--strides", default="8,16", help="the output strides to train and compare")
    parser.add_argument("--reuse", action="store_true", help="evaluate WORK/osN/student.safetensors when it exists")
    parser.add_argument("--student-preset", default=None,
                        help="train a STUDENT_PRESETS network instead of the demo's (its resnet from a random start: "
                             "no ImageNet weights offline)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    demo = DemoConfig(num_train=args.num_train, num_val=args.num_val, student_iters=args.iters,
                      student_self_train_from=args.iters * 3 // 4, out=args.work)
    work = Path(args.work)
    preset = args.student_preset
    strides = [STUDENT_PRESETS[preset]["output_stride"]] if preset else list(map(int, args.strides.split(",")))
    folder = (lambda stride: f"{preset}-os{stride}") if preset else (lambda stride: f"os{stride}")
    finished = [work / folder(stride) / "student.safetensors" for stride in strides]
    reusing = args.reuse and all(path.is_file() for path in finished) and (work / "world").is_dir()
    # Reusing finished students needs only the written world's val split: no world, no pseudo-labels again.
    world = work / "world" if reusing else write_world(work / "world", demo.num_train, demo.num_val,
                                                        seed=demo.seed, progress=False)
    clip = load_clip(demo.clip, demo.clip_weights)
    inference = InferenceConfig(short_side=demo.short_side, mode="whole")
    base = dataclasses.replace(student_transfer_config(demo, world, work), prompts=str(WORLD_PROMPTS))
    teacher = Segmenter(load_mvpseg(base.prompts, clip), inference, device="cpu")
    val = build_dataset("custom", world, "val")
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M"), "teacher": WORLD_PROMPTS.name,
                               "num_train": demo.num_train, "num_val": demo.num_val, "iters": demo.student_iters,
                               "self_train_from": demo.student_self_train_from, "threads": torch.get_num_threads(),
                               "student": dataclasses.asdict(base.student), "rows": {}}
    metrics = evaluate(teacher, val, progress=False)
    results["rows"]["teacher (MVP-SEG)"] = {key: metrics[key] for key in ("miou_seen", "miou_unseen", "hiou", "miou")}
    labelled = reusing  # the teacher's pseudo-labels: written by the first student's run
    previous = Path(args.out)
    if previous.is_file():
        kept = json.loads(previous.read_text())
        if {key: kept.get(key) for key in ("num_train", "num_val", "iters")} == \
                {key: results[key] for key in ("num_train", "num_val", "iters")}:
            results["rows"] = {**kept["rows"], **results["rows"]}
    for stride in strides:
        student_config = dataclasses.replace(base.student, output_stride=stride)
        if preset:
            student_config = StudentConfig(**{"backbone_weights": None, **STUDENT_PRESETS[preset]})
        result = student_row(demo, world, clip, val, work, prompts=WORLD_PROMPTS, student=student_config,
                             run_out=work / folder(stride), pseudo_labels=not labelled, reuse=args.reuse)
        labelled = True
        row = {key: result.figures[key] for key in ("miou_seen", "miou_unseen", "hiou", "miou")}
        name = f"student preset {preset} (random backbone)" if preset else "student"
        results["rows"][f"{name}, output stride {stride}"] = {
            **row, "map_stride": result.segmenter.feature_stride, "threads": torch.get_num_threads(),
            "train_seconds": result.train_seconds}
        print(f"{name}, output stride {stride}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items()), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
