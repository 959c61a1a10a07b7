"""MVP-SEG+ students: ``predict`` of every student preset against MVP-SEG RN50's on the same image, in PyTorch
and onnxruntime, and (with ``--training``) a training step's time.

Every preset of :data:`mvpseg.config.STUDENT_PRESETS` (random weights: speed does not depend on them) is
taught by MVP-SEG on an RN50 CLIP (random, BatchNorm statistics calibrated as in the other benchmarks).
``predict`` is :meth:`mvpseg.Segmenter.predict` on the 512x683 scene with 20 classes, the default
InferenceConfig (short side 512, sliding 512-px windows), the text embeddings cached; onnxruntime runs
the same windows through a file of :func:`mvpseg.export.export_onnx` (512-px crops) with as many threads
as torch. The machine is shared, so each preset's runs alternate with MVP-SEG's (PyTorch) in the same
rounds, and its ratios come from those rounds. The training step is ``mvpseg.transfer``'s: the teacher
labels the crops' unseen pixels (online), the student runs forward and backward, SGD steps; data loading
excluded.

    python benchmarks/student_bench.py [--device cuda] [--quick] [--threads N] [--training] [--presets fast,...]

Writes ``benchmarks/results/students[_cuda].json`` (with the machine it ran on); ``python benchmarks/run.py
--report-only`` puts it into ``docs/benchmarks.md``. The full suite (``benchmarks/run.py``) runs it too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
from mvpseg.config import STUDENT_PRESETS, InferenceConfig, StudentConfig
from mvpseg.losses import labelled_weight, segmentation_loss
from mvpseg.runtime import autocast
from mvpseg.transfer import UNSEEN, assign_unseen
from mvpseg.transfer.pseudo import teacher_scores

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


def predict_rounds(runners: dict[str, Callable[[], Any]], settings: Settings) -> dict[str, list[float]]:
    """Seconds of each runner, alternating in rounds (warm-up rounds dropped): the same load for each."""
    repeats = 1 if settings.quick else settings.repeats
    runs: dict[str, list[float]] = {name: [] for name in runners}
    for index in range(settings.warmup + repeats):
        for name, runner in runners.items():
            seconds, _ = timed(runner, settings.device)
            if index >= settings.warmup:
                runs[name].append(seconds)
    return runs


def onnx_segmenter(model: Any, names: list[str], folder: Path) -> Any:
    """An OnnxSegmenter of ``model`` (exported with 512-px crops), its text embeddings cached."""
    from mvpseg.export import OnnxSegmenter, export_onnx

    path = export_onnx(model, folder / "model.onnx", crop_size=512, dynamo=False)
    seg = OnnxSegmenter(path, model, config=InferenceConfig())
    seg.cache_text_embeddings(names, model.text_embeddings(names).detach().float())
    return seg


def _figures(runs: list[float]) -> dict[str, Any]:
    return {"seconds": median(runs), "runs": [round(value, 3) for value in runs]}


def run(settings: Settings, section: Section, presets: list[str] | None = None,
        training: bool = False) -> dict[str, Any]:
    """Predict figures of every student preset (PyTorch, onnxruntime) against MVP-SEG RN50's, and training steps."""
    device = settings.device
    with section("students: load"):
        clip = random_clip("RN50", device)
        teacher_model = build_model(clip)
        teacher = segmenter(clip, teacher_model, device)
    names = vocabulary(20)
    unseen = [15, 16, 17, 18, 19]  # VOC's unseen split
    image = scene(512, 683, seed=1)
    backends = ["torch"] + (["onnxruntime"] if device.type == "cpu" else [])
    result: dict[str, Any] = {"clip": "RN50", "image": list(image.shape[:2]), "classes": len(names),
                              "backends": backends}
    teacher.text_embeddings(names)
    with tempfile.TemporaryDirectory() as scratch, section("students: MVP-SEG predict"):
        runners = {"torch": lambda: teacher.predict(image, names)}
        if "onnxruntime" in backends:
            teacher_onnx = onnx_segmenter(teacher_model, names, Path(scratch))
            runners["onnxruntime"] = lambda: teacher_onnx.predict(image, names)
        runs = predict_rounds(runners, settings)
        result["mvpseg_predict"] = {"stride": teacher.feature_stride, **{name: _figures(runs[name]) for name in backends}}
        del runners
    batch_size, crop = (2, 512) if settings.quick else (4, 512)
    whole_crop = segmenter(clip, teacher_model, device, short_side=None, mode="whole")
    share_text(whole_crop, teacher, names)
    result["students"] = {}
    for name in presets or list(STUDENT_PRESETS):
        torch.manual_seed(0)
        # a random backbone: the predict time does not depend on the weights
        config = StudentConfig(**{"backbone_weights": None, **STUDENT_PRESETS[name]})
        student = build_student(teacher_model, config).to(device)
        figures: dict[str, Any] = {**dataclasses.asdict(config), "stride": student.feature_stride,
                                   "parameters": sum(p.numel() for p in student.parameters() if p.requires_grad)}
        if training:
            with section(f"students: {name} training step"):
                figures["training_step"] = training_step(student, whole_crop, names, unseen, batch_size, crop,
                                                         settings)
        seg = mvpseg.Segmenter(student.eval(), InferenceConfig(), device=device)
        seg.cache_text_embeddings(names, student.text_embeddings(names).detach())
        with tempfile.TemporaryDirectory() as scratch, section(f"students: {name} predict"):
            runners = {"mvpseg": lambda: teacher.predict(image, names), "torch": lambda seg=seg: seg.predict(image, names)}
            if "onnxruntime" in backends:
                student_onnx = onnx_segmenter(student, names, Path(scratch))
                runners["onnxruntime"] = lambda student_onnx=student_onnx: student_onnx.predict(image, names)
            runs = predict_rounds(runners, settings)
            del runners
        figures["predict"] = {backend: _figures(runs[backend]) for backend in backends}
        figures["mvpseg_predict_same_rounds"] = _figures(runs["mvpseg"])
        # The ratio of each round's student time to MVP-SEG's in that round, their median.
        figures["predict_vs_mvpseg"] = {backend: median([s / t for s, t in zip(runs[backend], runs["mvpseg"])])
                                        for backend in backends}
        best = min(backends, key=lambda backend: figures["predict_vs_mvpseg"][backend])
        figures["best_backend"], figures["best_vs_mvpseg"] = best, figures["predict_vs_mvpseg"][best]
        result["students"][name] = figures
        print(f"{name}: " + ", ".join(f"{b} {figures['predict'][b]['seconds']:.2f} s "
                                       f"({figures['predict_vs_mvpseg'][b]:.2f}x MVP-SEG)" for b in backends), flush=True)
        del student, seg
    return result


def write(settings: Settings, section: Section, path: Path | None = None, presets: list[str] | None = None,
          training: bool = True, merge: bool = False) -> dict[str, Any]:
    """Measure, and write the figures with the machine, date and mode to ``path`` (default beside this file)."""
    results = {"date": time.strftime("%Y-%m-%d %H:%M"), "mode": "quick" if settings.quick else "full",
               "machine": machine(settings.device), **run(settings, section, presets, training)}
    results["sections"] = section.records
    suffix = "" if settings.device.type == "cpu" else f"_{settings.device.type}"
    path = path or HERE / "results" / f"students{suffix}.json"
    if merge and path.is_file():  # keep the presets measured earlier (each has its own MVP-SEG rounds)
        earlier = json.loads(path.read_text())
        kept = {name: {"date": earlier["date"], **figures} for name, figures in earlier.get("students", {}).items()
                if name not in results["students"] and "predict_vs_mvpseg" in figures
                and isinstance(figures["predict_vs_mvpseg"], dict)}
        results["students"] = {**kept, **results["students"]}
    path.write_text(json.dumps(results, indent=2, default=float) + "\n")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="results JSON (default benchmarks/results/students[_cuda].json)")
    parser.add_argument("--training", action="store_true", help="also time a training step of each preset (slow)")
    parser.add_argument("--presets", default=None, help=f"comma-separated presets (default: all of {', '.join(STUDENT_PRESETS)})")
    parser.add_argument("--merge", action="store_true", help="keep the other presets of the results file")
    args = parser.parse_args()
    settings = Settings.create(args.device, args.quick, args.threads)
    presets = args.presets.split(",") if args.presets else None
    results = write(settings, Section(), Path(args.out) if args.out else None, presets, args.training, args.merge)
    print(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
