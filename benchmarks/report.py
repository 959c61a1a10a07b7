"""``docs/benchmarks.md`` from ``benchmarks/results/suite.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from inference_bench import CASES, PHASES

PHASE_NAMES = {
    "image_tower": "image tower",
    "head_matching": "dense head + matching (cosine maps, stitching, fusion, GPR)",
    "text_lookup": "text embeddings (cached lookup)",
    "resize": "resizing (uint8 -> float, antialiased resize, normalisation)",
    "upsample": "upsampling + labels",
    "other": "the rest (image checks, NumPy output)",
}
TRAIN_PARTS = {
    "image_tower": "image tower (frozen, forward)",
    "cache_read": "feature-cache read (memory-mapped fp16)",
    "text_forward": "text tower forward",
    "text_backward": "text tower backward",
    "head_loss_forward": "head + losses forward",
    "head_loss_backward": "head + losses backward",
    "optimizer": "optimizer",
}


def _s(value: float) -> str:
    """Seconds with sensible digits."""
    if value != value:  # NaN
        return "-"
    if value < 0.001:
        return f"{value * 1e6:.0f} µs"
    if value < 1:
        return f"{value * 1e3:.0f} ms"
    return f"{value:.2f} s"


def _load(section: dict[str, Any]) -> str:
    loads = section["load_start"][:1] + section["load_end"][:1]
    return f"{min(loads):.1f}-{max(loads):.1f}"


def machine_section(results: dict[str, Any]) -> list[str]:
    machine = results["machine"]
    lines = ["## Machine", "", "| | |", "|---|---|"]
    rows = [
        ("CPU", f"{machine['cpu']} ({machine['cores']} cores, {machine['memory_gib']} GiB)"),
        ("CPU kernels", f"{machine['cpu_capability']}; AVX512-BF16: {'yes' if machine['avx512_bf16'] else 'no'}; "
                        f"AMX: {'yes' if machine['amx'] else 'no'}"),
        ("device", machine["device"] + (f" ({machine['gpu']})" if "gpu" in machine else "")),
        ("torch / open_clip / Python", f"{machine['torch']} / {machine['open_clip']} / {machine['python']}"),
        ("torch threads", str(machine["threads"])),
        ("load average at start (1, 5, 15 min)", ", ".join(f"{value:.2f}" for value in machine["load_average_at_start"])),
        ("mode", f"{results['mode']} (warm-up {results['settings']['warmup']}, "
                 f"median of {results['settings']['repeats']} runs unless a table says otherwise)"),
        ("date", results["date"]),
        ("run time", f"{results['run_seconds'] / 60:.1f} min"),
    ]
    lines += [f"| {key} | {value} |" for key, value in rows]
    lines += ["", "The 1-minute load average at the start and end of each part (a load above the core count means "
              "other processes competed for the cores):", "",
              "| part | seconds | load |", "|---|---:|---:|"]
    lines += [f"| {name} | {record['seconds']:.0f} | {_load(record)} |" for name, record in results["sections"].items()]
    return lines + [""]


def summary_section(results: dict[str, Any]) -> list[str]:
    summary = results["summary"]
    lines = ["## Summary", "", "| figure | " + " | ".join(summary["overhead_ratio"]) + " | target |",
             "|---|" + "---:|" * len(summary["overhead_ratio"]) + "---|"]

    def row(name: str, values: dict[str, float], target: str, digits: int = 2) -> str:
        cells = [f"{values[clip]:.{digits}f}" if clip in values else "-" for clip in summary["overhead_ratio"]]
        return f"| {name} | " + " | ".join(cells) + f" | {target} |"

    lines.append(row("overhead ratio, 512x683, 20 classes (`overhead_ratio`)", summary["overhead_ratio"], "<= 1.15"))
    lines.append(row("overhead ratio, 2048x2048, 171 classes", summary.get("overhead_ratio_2048", {}), "<= 1.15"))
    lines.append(row("hardware ratio, 512x683 (`hardware_ratio`)", summary["hardware_ratio"], ">= 0.5 (aim)"))
    lines.append(row("hardware ratio, 2048x2048", summary.get("hardware_ratio_2048", {}), ">= 0.5 (aim)"))
    clips = list(summary["overhead_ratio"])
    peak = summary.get("peak_rss_mib_4096")
    if peak is not None:
        cells = [f"{peak:.0f} MiB" if clip == "RN50" else "-" for clip in clips]
        lines.append("| peak RSS, 4096x4096, 171 classes (`peak_rss_mib_4096`) | " + " | ".join(cells) + " | < 2048 MiB |")
    speedup = summary.get("train_cache_speedup")
    if speedup is not None:
        cells = [f"{speedup:.2f}x" if clip == "RN50" else "-" for clip in clips]
        lines.append("| training step speed-up from the feature cache (`train_cache_speedup`) | " + " | ".join(cells)
                     + " | |")
    lines += ["", "The overhead ratio is `predict` (text embeddings cached) over open_clip's own `encode_image` on "
              "exactly the crops `predict` feeds the tower, batched the same way, run alternately in the same "
              "process; open_clip's model is created for the crop size (`force_image_size`), since its "
              "attention pool and positional embeddings are fixed to one input size. The hardware ratio is the "
              "image tower's FLOPs (counted by `torch.utils.flop_counter`, a multiply-add = 2) per second of "
              "tower time inside `predict`, over the FLOP/s of a 2048x2048 matrix product measured in the same "
              "process.", ""]
    return lines


def inference_section(results: dict[str, Any]) -> list[str]:
    inference = results["inference"]
    lines = ["## Inference", ""]
    for case, shape, count in CASES:
        clips = [name for name, value in inference.items() if case in value["cases"]]
        if not clips:
            continue
        first = inference[clips[0]]["cases"][case]
        lines += [f"### {shape[0]}x{shape[1]} image, {count} classes", "",
                  f"Resized to a short side of 512 and cut into {first['windows']} window(s) of "
                  f"{first['crop'][0]}x{first['crop'][1]}; K = 3 learned prompts + the global prompt, GPR on; "
                  "median seconds of the timed runs.", "",
                  "| phase of `predict` | " + " | ".join(clips) + " |", "|---|" + "---:|" * len(clips)]
        for phase in PHASES + ("total",):
            cells = []
            for name in clips:
                seconds = inference[name]["cases"][case]["predict_seconds"]
                total = seconds["total"]
                share = f" ({seconds[phase] / total:.0%})" if phase != "total" else ""
                cells.append(_s(seconds[phase]) + share)
            label = PHASE_NAMES.get(phase, "**total**")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        extra = [
            ("open_clip `encode_image`, same crops", lambda c: _s(c["encode_image_seconds"])),
            ("**overhead ratio**", lambda c: f"**{c['overhead_ratio']:.2f}**"),
            ("tower GFLOP (ours / encode_image)", lambda c: f"{c['tower_gflop']:.1f} / {c['encode_image_gflop']:.1f}"),
            ("tower GFLOP/s", lambda c: f"{c['tower_gflops_per_second']:.1f}"),
            ("2048x2048 matrix product GFLOP/s, same runs", lambda c: f"{c['matmul_gflops_per_second']:.1f}"),
            ("**hardware ratio**", lambda c: f"**{c['hardware_ratio']:.2f}**"),
            ("timed runs (predict seconds)", lambda c: ", ".join(f"{v:.2f}" for v in c["predict_runs"])),
            ("timed runs (encode_image seconds)", lambda c: ", ".join(f"{v:.2f}" for v in c["encode_image_runs"])),
            ("distinct labels in the prediction", lambda c: str(c["labels_found"])),
        ]
        for label, cell in extra:
            lines.append(f"| {label} | " + " | ".join(cell(inference[name]["cases"][case]) for name in clips) + " |")
        lines.append("")

    lines += ["### Text encoding of a vocabulary", "",
              "`Segmenter.text_embeddings`: the first call runs the text tower on (K+1) x C prompts; later calls "
              "with the same vocabulary are a dictionary lookup.", "",
              "| CLIP | classes | first call | cached call |", "|---|---:|---:|---:|"]
    for name, value in inference.items():
        for text in value["text"]:
            lines.append(f"| {name} | {text['classes']} | {_s(text['first_call_seconds'])} | "
                         f"{_s(text['cached_call_seconds'])} |")
    lines.append("")
    comparisons = [(name, row) for name, value in inference.items() for row in value.get("precision", [])]
    if comparisons:
        lines += ["### Lower precision against fp32", "",
                  "`InferenceConfig(precision=...)` (autocast) against `precision=\"fp32\"` on the 512x683 image with "
                  "20 classes; both use the same fp32 text embeddings, so only the image side's precision differs.", "",
                  "| CLIP | precision | runs (after warm-up) | fp32 | lower | speed-up | labels equal to fp32's |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for name, row in comparisons:
            lines.append(f"| {name} | {row['precision']} | {row['runs']} ({row['warmup']}) | {_s(row['fp32_seconds'])} | "
                         f"{_s(row['seconds'])} | {row['speedup']:.2f}x | {row['label_agreement_percent']:.2f} % |")
        lines.append("")
    return lines


def memory_section(results: dict[str, Any]) -> list[str]:
    memory = results.get("memory")
    if not memory:
        return []
    lines = ["## Peak memory", "",
             "Each case runs in a fresh Python process: build the random CLIP and MVP-SEG, segment one synthetic "
             "scene. \"Process peak\" is the largest resident set of the whole process (`VmHWM`, imports and model "
             "included); \"before predict\" is the RSS once everything is loaded; \"during predict\" the peak "
             "while `predict` runs (`/proc/self/clear_refs` resets the high-water mark before it). Text embeddings "
             "come from the parent unless the row says they were encoded in the process.", "",
             "| CLIP | image | classes | text | before predict | during predict | process peak | CUDA max allocated |",
             "|---|---|---:|---|---:|---:|---:|---:|"]
    cases = list(memory.get("headline", []))
    for group in ("by_side", "by_classes"):
        for clip_cases in memory.get(group, {}).values():
            cases += [case for case in clip_cases if case not in cases]
    for case in sorted(cases, key=lambda c: (c["clip"], c["side"], c["classes"], c["text_encoded_here"])):
        cuda = f"{case['cuda_max_allocated_mib']:.0f} MiB" if "cuda_max_allocated_mib" in case else "-"
        lines.append(f"| {case['clip']} | {case['side']}x{case['side']} | {case['classes']} | "
                     f"{'encoded here' if case['text_encoded_here'] else 'given'} | {case['rss_after_load_mib']:.0f} MiB | "
                     f"{case['predict_peak_rss_mib']:.0f} MiB | **{case['peak_rss_mib']:.0f} MiB** | {cuda} |")
    imports = [case["rss_after_imports_mib"] for case in cases]
    if imports:
        lines += ["", f"Of this, importing torch, open_clip and mvpseg takes {min(imports):.0f} MiB of RSS before any "
                      f"model exists (torch {results['machine']['torch']})."]
    return lines + [""]


def training_section(results: dict[str, Any]) -> list[str]:
    training = results.get("training")
    if not training:
        return []
    breakdown = training["breakdown"]
    lines = ["## Training", "",
             f"One step of MVP-SEG training: RN50, K = {breakdown['num_prompts']}, {breakdown['classes']} seen classes, "
             f"batch {breakdown['batch_size']}, crop {breakdown['crop']}, {breakdown.get('precision', 'fp32')}, SGD; the step of `mvpseg.train` taken apart "
             "(the text embeddings are detached after the text tower so that its backward is timed on its own; the "
             "gradients are those of the joint backward). Data loading is not included.", "",
             "| part | from images | from the feature cache |", "|---|---:|---:|"]
    for part, label in TRAIN_PARTS.items():
        lines.append(f"| {label} | {_s(breakdown['uncached']['seconds'][part])} | "
                     f"{_s(breakdown['cached']['seconds'][part])} |")
    lines.append(f"| **step** | **{_s(breakdown['uncached']['seconds']['total'])}** | "
                 f"**{_s(breakdown['cached']['seconds']['total'])}** |")
    lines += ["", f"Speed-up of a step from the cache (`train_cache_speedup`): **{breakdown['train_cache_speedup']:.2f}x**. "
              f"Building the cache costs {_s(breakdown['cache_build_seconds_per_view'])} per augmented view "
              "(one image-tower forward), paid once per view. Loss after the same warm-up step: "
              f"{breakdown['loss_uncached']:.6f} from images, {breakdown['loss_cached']:.6f} from the fp16 cache.", ""]
    end = training.get("end_to_end")
    if end:
        lines += [f"`mvpseg.train` itself (loader with {end['num_workers']} workers, {end['iters']} steady-state steps "
                  f"after the first): {_s(end['uncached']['seconds_per_step'])} per step from images, "
                  f"{_s(end['cached']['seconds_per_step'])} from the feature cache: "
                  f"**{end['train_cache_speedup']:.2f}x**.", ""]
    return lines


def before_after_section(results: dict[str, Any]) -> list[str]:
    comparison = results.get("before_after")
    if not comparison:
        return []
    lines = ["## Before and after", "",
             f"The `Segmenter` of `{comparison['baseline']}` (before the speed work) against the one that work made, in "
             "the same process, runs alternating; same model, same images, same text embeddings (measured by the "
             "suite's former `--baseline` option, when that work landed). What changed:", "",
             "- **Upsampling and labels.** Before, each block of 256 output rows was a `grid_sample` of every class, "
             "`(C, 256, W)` float32 (717 MB at C = 171, W = 4096), followed by an `argmax` over the classes. Now "
             "`upsample_log_scores` interpolates like `F.interpolate` (two cell rows along the width, then each output "
             "row between them) one class at a time with a running maximum (strict `>`: ties keep the lower class, as "
             "`argmax` does), and visits only the classes that can win in each quad of four feature cells: a class "
             "whose largest corner is below another's smallest corner, or which another candidate beats at all four "
             "corners, cannot win anywhere in the quad (a bilinear interpolation of positive corner differences is "
             "positive). Columns are ordered by their number of candidates so each pixel costs its own quad's count. "
             "Labels equal those of every class (tested, ties included). Block rows come from a memory budget "
             "(`InferenceConfig.upsample_budget_mib`, 64 MiB) and no longer depend on the number of classes; a "
             "full-resolution tensor of every class exists only with `return_scores=True`.",
             "- **Image tower.** The Segmenter runs a copy of a ResNet tower with every BatchNorm folded into the "
             "convolution before it (`fold_batchnorm`) and in channels-last layout (`InferenceConfig(fold_batchnorm=True, "
             "channels_last=True)`); the caller's CLIP is left as it is. Same features up to float rounding (tested).",
             "- **Resizing.** uint8 -> float on the contiguous HWC array and normalisation in place: the same numbers, "
             "without two full-size float temporaries.", "",
             "| CLIP | case | phase | before | after |", "|---|---|---|---:|---:|"]
    for row in comparison["rows"]:
        for phase in ("image_tower", "resize", "upsample", "total"):
            lines.append(f"| {row['clip']} | {row['case']} | {PHASE_NAMES.get(phase, 'total')} | "
                         f"{_s(row['before'][phase])} | {_s(row['after'][phase])} |")
        lines.append(f"| {row['clip']} | {row['case']} | labels equal to before | | {row['label_agreement_percent']:.4f} % |")
    for case in comparison.get("memory", []):
        lines.append(f"| {case['clip']} | {case['side']}x{case['side']}, {case['classes']} classes | process peak RSS | "
                     f"{case['before']:.0f} MiB | {case['after']:.0f} MiB |")
    return lines + [""]


def students_section(students: dict[str, Any] | None) -> list[str]:
    """MVP-SEG+ student presets: predict time against MVP-SEG's, PyTorch and onnxruntime (benchmarks/student_bench.py)."""
    if not students:
        return []
    machine = students["machine"]
    backends = students.get("backends", ["torch"])
    teacher = students["mvpseg_predict"]
    lines = ["## MVP-SEG+ students", "",
             f"`python benchmarks/student_bench.py` ({students['mode']} mode, {students['date']}; {machine['cpu']}, "
             f"{machine['cores']} cores, {machine['threads']} torch threads, {machine['device']}, load "
             f"{machine['load_average_at_start'][0]:.1f} at start). Every preset of `mvpseg.config.STUDENT_PRESETS` "
             f"(`mvpseg transfer --student-preset NAME`), random weights, taught by MVP-SEG on a random RN50. "
             f"`predict`: the {students['image'][0]}x{students['image'][1]} scene, {students['classes']} classes, "
             f"short side 512, sliding 512-px windows, in PyTorch and through onnxruntime (`mvpseg export`, the "
             f"same windows). MVP-SEG RN50's own `predict`: "
             + ", ".join(f"{_s(teacher[b]['seconds'])} ({b})" for b in backends if b in teacher)
             + ". Each preset's runs alternate with MVP-SEG's (PyTorch) in the same rounds; the ratio is the median "
               "over rounds of the student's time over MVP-SEG's.", "",
             "| preset | network | output stride (maps) | trainable parameters | "
             + " | ".join(f"predict, {b} | / MVP-SEG" for b in backends) + " | training step (batch x crop) |",
             "|---|---|---|---:|" + "---:|---:|" * len(backends) + "---|"]
    for name, figures in students["students"].items():
        predict = figures["predict"]
        if "torch" not in predict:  # the former layout: one backend
            predict = {"torch": predict}
            ratios = {"torch": figures["predict_vs_mvpseg"]}
        else:
            ratios = figures["predict_vs_mvpseg"]
        step = figures.get("training_step")
        network = f"{figures.get('arch', name)} {figures.get('backbone', 'resnet101')}"
        if figures.get("head_channels", 256) != 256:
            network += f", {figures['head_channels']} channels"
        cells = " | ".join(f"{_s(predict[b]['seconds'])} | {ratios[b]:.2f}" if b in predict else "- | -"
                           for b in backends)
        lines.append(f"| {name} | {network} | {figures.get('output_stride', 8)} ({figures.get('stride', predict['torch'].get('stride'))}) | "
                     f"{figures['parameters'] / 1e6:.1f} M | {cells} | "
                     + (f"{_s(step['step_seconds'])} ({step['batch_size']} x {step['crop']})" if step else "not measured")
                     + " |")
    if machine["load_average_at_start"][0] > machine["cores"]:
        lines += ["", f"The machine was busy (load {machine['load_average_at_start'][0]:.1f} on {machine['cores']} cores): "
                      "every time above is inflated and the ratios are noisy; rerun on an idle machine."]
    earlier = students.get("earlier")
    if earlier:  # the paper's presets as measured by the former version of this script (PyTorch only)
        lines += ["", f"The paper's networks, measured by this script's former version (commit {earlier['commit']}, "
                      f"{earlier['date']}, load {earlier['load_average_at_start'][0]:.1f}; PyTorch only; MVP-SEG RN50: "
                      f"{_s(earlier['mvpseg_predict_seconds'])}) with mvpseg's 256-wide head on torchvision's ResNet-101: "
                  + "; ".join(f"{figures['arch']} at output stride {figures['output_stride']} "
                              f"{_s(figures['predict_seconds'])}, {figures['predict_vs_mvpseg']:.2f}x MVP-SEG's, training step "
                              f"{_s(figures['training_step_seconds'])}" for figures in earlier["students"].values())
                  + ". The `paper` and `paper-v3plus` presets are now MaskCLIP+'s students (its D-wide heads on "
                    "ResNetV1c-101) and were not measured here."]
    return lines + [""] + student_world_section(students.get("world"))


def student_world_section(world: dict[str, Any] | None) -> list[str]:
    """World accuracy of the demo's student at output stride 8 and 16 (benchmarks/studies/student_world.py)."""
    if not world:
        return []
    student = world["student"]
    lines = [f"World accuracy (`python benchmarks/studies/student_world.py`, {world['date']}): the demo's MVP-SEG+ student "
             f"({student['arch']} on the tiny CLIP's trunk, {student['head_channels']} channels) taught by the shipped "
             f"world prompts, {world['num_train']} training images, {world['iters']} steps (self-training from "
             f"{world['self_train_from']}), evaluated on {world['num_val']} val images, at output stride 8 and 16.", "",
             "| model | mIoU(S) | mIoU(U) | hIoU | mIoU |", "|---|---:|---:|---:|---:|"]
    for name, row in world["rows"].items():
        lines.append(f"| {name} | " + " | ".join(f"{row[key]:.1f}" for key in ("miou_seen", "miou_unseen", "hiou", "miou"))
                     + " |")
    return lines + [""]


def notes_section(results: dict[str, Any]) -> list[str]:
    lines = ["## Notes", ""]
    lines += [f"- {note}" for note in results.get("notes", [])]
    return lines + [""]


#: Paragraphs written by hand (what a measurement cannot say: why a row is what it is), kept out of the generated
#: page so that a rerun keeps them: each ``## Heading`` block goes at the end of the report's section of that name.
NOTES = Path(__file__).resolve().parent / "report_notes.md"


def hand_written(path: Path = NOTES) -> dict[str, list[str]]:
    """The hand-written paragraphs of ``path`` by section heading ({} when there is no such file)."""
    if not path.is_file():
        return {}
    blocks: dict[str, list[str]] = {}
    heading = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            heading = line
            blocks[heading] = []
        elif heading is not None:
            blocks[heading].append(line)
    return {key: [*"\n".join(lines).strip("\n").split("\n"), ""] for key, lines in blocks.items()}


def _with_notes(lines: list[str], notes: dict[str, list[str]]) -> list[str]:
    """``lines`` with each hand-written block at the end of its section (before the next ``## `` heading)."""
    placed: list[str] = []
    current = None
    for line in lines:
        if line.startswith("## ") and current in notes:
            placed += notes[current]
        if line.startswith("## "):
            current = line
        placed.append(line)
    if current in notes:
        placed += notes[current]
    missing = set(notes) - {line for line in lines if line.startswith("## ")}
    if missing:
        raise ValueError(f"{NOTES.name} has notes for sections the report does not have: {', '.join(sorted(missing))}")
    return placed


def write(results: dict[str, Any], path: Path, figures: list[Path], students: dict[str, Any] | None = None,
          notes: dict[str, list[str]] | None = None) -> None:
    """Write the Markdown report (``students``: the figures of benchmarks/student_bench.py, if measured), with the
    hand-written paragraphs of ``benchmarks/report_notes.md`` (or ``notes``) in their sections."""
    lines = ["# Benchmarks", "",
             "Speed and memory of mvpseg's inference and training, measured by `python benchmarks/run.py "
             "[--device cuda] [--quick] [--threads N]` (this page and `benchmarks/results/suite.json` "
             "are its output; paragraphs written by hand come from `benchmarks/report_notes.md`; a quick run writes "
             "`docs/benchmarks_quick.md` instead). CLIP weights are random (speed does not depend on their values); the ResNet's "
             "BatchNorm statistics are set from one synthetic scene so that features vary over the image as a "
             "trained network's do, and the label maps are not one class everywhere. Images are synthetic scenes. "
             "Every figure is the median of repeated runs after a warm-up run.", ""]
    lines += summary_section(results) + machine_section(results) + inference_section(results)
    lines += memory_section(results) + training_section(results) + students_section(students)
    lines += before_after_section(results)
    if figures:
        lines += ["## Scaling", ""]
        lines += [f"![{figure.stem}]({figure.name})" for figure in figures]
        lines += [""]
    lines += notes_section(results)
    lines = _with_notes(lines, hand_written() if notes is None else notes)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
