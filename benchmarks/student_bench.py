"""MVP-SEG+ students: a training step's time, and ``predict`` against MVP-SEG's on the same image.

Both students (DeepLabv2 and DeepLabv3+, ResNet-101, output stride 8, random weights: speed does not
depend on them) are taught by MVP-SEG on an RN50 CLIP (random, BatchNorm statistics calibrated as in
the other benchmarks). The training step is ``mvpseg.transfer``'s: the teacher labels the crops'
unseen pixels (online), the student runs forward and backward, SGD steps; data loading excluded.
``predict`` is :meth:`mvpseg.Segmenter.predict` on the 512x683 scene with 20 classes, the default
InferenceConfig (short side 512, sliding 512-px windows), the text embeddings cached.

    python benchmarks/student_bench.py [--device cuda] [--quick] [--threads N]

Writes ``benchmarks/results_students[_cuda].json`` (with the machine it ran on); ``python benchmarks/run.py
--report-only`` puts it into ``docs/benchmarks.md``. The full suite (``benchmarks/run.py``) runs it too.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import (
    Section,
    Settings,
    build_model,
    machine,
    median,
    random_clip,
    scene,
    segmenter,
    share_text,
    timed,
    vocabulary,
)

import mvpseg
from mvpseg.build import build_student
from mvpseg.config import InferenceConfig, StudentConfig
from mvpseg.losses import labelled_weight, segmentation_loss
from mvpseg.runtime import autocast
from mvpseg.transfer import UNSEEN, assign_unseen
from mvpseg.transfer.pseudo import teacher_scores

ARCHS = ("deeplabv2", "deeplabv3plus")
HERE = Path(__file__).resolve().parent


def training_step(student: Any, teacher: mvpseg.Segmenter, names: list[str], unseen: list[int], batch_size: int,
                  crop: int, settings: Settings) -> dict[str, Any]:
    """Median seconds of the teacher's labelling and of the student's forward, backward and SGD step."""
    device = settings.device
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, 3, crop, crop, generator=generator).to(device)
    labels = torch.randint(0, len(names), (batch_size, crop, crop), generator=generator).to(device)
    labels[torch.isin(labels, torch.tensor(unseen, device=device))] = UNSEEN
    params = [parameter for parameter in student.parameters() if parameter.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)
    student.train()

    def teach() -> torch.Tensor:
        scores = teacher_scores(teacher.predict_torch(images, names), unseen, use_gpr=False)
        return assign_unseen(labels, scores, unseen).clone()

    def learn(taught: torch.Tensor) -> None:
        with autocast(device, "auto"):
            output = student(images, names)
        loss = segmentation_loss(output, taught, normalizer=labelled_weight(taught))
        optimizer.zero_grad(set_to_none=False)
        loss.backward()
        optimizer.step()

    repeats = 1 if settings.quick else 3
    teacher_seconds, student_seconds = [], []
    for index in range(settings.warmup + repeats):
        seconds, taught = timed(teach, device)
        learn_seconds, _ = timed(lambda taught=taught: learn(taught), device)
        if index >= settings.warmup:
            teacher_seconds.append(seconds)
            student_seconds.append(learn_seconds)
    return {"batch_size": batch_size, "crop": crop, "runs": repeats, "teacher_seconds": median(teacher_seconds),
            "student_seconds": median(student_seconds),
            "step_seconds": median(teacher_seconds) + median(student_seconds),
            "student_runs": [round(value, 3) for value in student_seconds]}


def predict_times(seg: mvpseg.Segmenter, image: np.ndarray, names: list[str], settings: Settings) -> dict[str, Any]:
    """Median seconds of ``predict`` (text embeddings already cached)."""
    repeats = 1 if settings.quick else settings.repeats
    runs = []
    for index in range(settings.warmup + repeats):
        seconds, _ = timed(lambda: seg.predict(image, names), settings.device)
        if index >= settings.warmup:
            runs.append(seconds)
    return {"seconds": median(runs), "runs": [round(value, 3) for value in runs], "stride": seg.stride}


def run(settings: Settings, section: Section) -> dict[str, Any]:
    """Training-step and predict figures of both students, and MVP-SEG's predict on the same image."""
    device = settings.device
    with section("students: load"):
        clip = random_clip("RN50", device)
        teacher_model = build_model(clip)
        teacher = segmenter(clip, teacher_model, device)
    names = vocabulary(20)
    unseen = [15, 16, 17, 18, 19]  # VOC's unseen split
    image = scene(512, 683, seed=1)
    result: dict[str, Any] = {"clip": "RN50", "image": list(image.shape[:2]), "classes": len(names)}
    with section("students: MVP-SEG predict"):
        teacher.text_embeddings(names)
        result["mvpseg_predict"] = predict_times(teacher, image, names, settings)
    batch_size, crop = (2, 512) if settings.quick else (4, 512)
    whole_crop = segmenter(clip, teacher_model, device, short_side=None, mode="whole")
    share_text(whole_crop, teacher, names)
    result["students"] = {}
    for arch in ARCHS:
        torch.manual_seed(0)
        # mvpseg's head with the backbone's BatchNorms fixed: the students results_students.json was measured on
        student = build_student(teacher_model, StudentConfig(arch=arch, head="mvpseg", backbone="resnet101",
                                                             backbone_weights=None, output_stride=8,
                                                             freeze_bn="backbone"))
        student.to(device)
        figures: dict[str, Any] = {"arch": arch, "backbone": "resnet101", "output_stride": 8,
                                   "parameters": sum(p.numel() for p in student.parameters() if p.requires_grad)}
        with section(f"students: {arch} training step"):
            figures["training_step"] = training_step(student, whole_crop, names, unseen, batch_size, crop, settings)
        seg = mvpseg.Segmenter(student.eval(), InferenceConfig(), device=device)
        seg.cache_text_embeddings(names, student.text_embeddings(names).detach())
        with section(f"students: {arch} predict"):
            figures["predict"] = predict_times(seg, image, names, settings)
        figures["predict_vs_mvpseg"] = figures["predict"]["seconds"] / result["mvpseg_predict"]["seconds"]
        result["students"][arch] = figures
        del student, seg
    return result


def write(settings: Settings, section: Section, path: Path | None = None) -> dict[str, Any]:
    """Measure, and write the figures with the machine, date and mode to ``path`` (default beside this file)."""
    results = {"date": time.strftime("%Y-%m-%d %H:%M"), "mode": "quick" if settings.quick else "full",
               "machine": machine(settings.device), **run(settings, section)}
    results["sections"] = section.records
    suffix = "" if settings.device.type == "cpu" else f"_{settings.device.type}"
    path = path or HERE / f"results_students{suffix}.json"
    path.write_text(json.dumps(results, indent=2, default=float) + "\n")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="results JSON (default benchmarks/results_students[_cuda].json)")
    args = parser.parse_args()
    settings = Settings.create(args.device, args.quick, args.threads)
    results = write(settings, Section(), Path(args.out) if args.out else None)
    print(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
