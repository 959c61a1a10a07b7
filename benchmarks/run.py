"""mvpseg's benchmark suite: inference and training speed and memory, RN50 and ViT-B-16.

Writes ``benchmarks/results/suite.json``, ``results/students.json``, ``docs/benchmarks.md`` and the scaling plots
``docs/benchmarks_*.png`` (``--quick``: ``benchmarks/results/suite_quick.json``, ``results/students_quick.json``,
``docs/benchmarks_quick.md`` and ``docs/benchmarks_quick_*.png``, so that a quick run never replaces a full run's
files) (with ``--device cuda``: ``results/suite_cuda.json``, ``benchmarks_cuda.md`` and ``benchmarks_cuda_*.png``).
Every result file of the suite and of the studies (``benchmarks/studies/``) lies in ``benchmarks/results/``.

    pip install -e ".[bench]"
    python benchmarks/run.py [--device cuda] [--quick] [--threads N]

``--quick`` (a few minutes on a 2-core CPU): 2 timed runs per figure, fewer curve points, and for
ViT-B-16 only the 512x683 case.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import inference_bench
import memory_bench
import plots
import report
import student_bench
import torch
import train_bench
from common import CLIPS, Section, Settings, machine

REPOSITORY = Path(__file__).resolve().parent.parent
#: The folder of every result file (the suite's and the studies').
RESULTS = REPOSITORY / "benchmarks" / "results"


def memory_cases(settings: Settings, section: Section, stash: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Peak memory in fresh processes: the 4096x4096 / 171-class case, and curves against side and classes."""
    device, threads = str(settings.device), torch.get_num_threads()
    sides = [256, 4096] if settings.quick else [256, 512, 1024, 2048, 4096]
    counts = [5, 171] if settings.quick else [5, 20, 60, 120, 171]
    result: dict[str, Any] = {"headline": [], "by_side": {}, "by_classes": {}}
    with tempfile.TemporaryDirectory() as folder:
        for name in ("RN50",) if settings.quick else CLIPS:
            inputs = memory_bench.save_inputs(Path(folder), stash[name]["clip"], stash[name]["text"])
            cases: dict[tuple[int, int], dict[str, Any]] = {}

            def case(side: int, count: int, name: str = name, inputs: Path = inputs,
                     cases: dict[tuple[int, int], dict[str, Any]] = cases) -> dict[str, Any]:
                if (side, count) not in cases:
                    with section(f"memory: {name} {side}x{side}, {count} classes"):
                        cases[side, count] = memory_bench.measure(name, side, count, inputs, device, threads)
                return cases[side, count]

            result["headline"].append(case(4096, 171))
            if not settings.quick:
                with section(f"memory: {name} 4096x4096, 171 classes, text encoded in the process"):
                    result["headline"].append(memory_bench.measure(name, 4096, 171, inputs, device, threads,
                                                                   encode_text=True))
            result["by_side"][name] = [case(side, 171) for side in sides]
            result["by_classes"][name] = [case(4096, count) for count in counts]
    return result


def threads_comparison(settings: Settings, section: Section, clip: Any) -> dict[str, Any]:
    """The RN50 tower on two 512x512 crops with 1 thread and with the run's threads (the machine's
    load can make more threads slower: every parallel operation waits for its slowest thread)."""
    from common import build_model, measure, median

    from mvpseg.inference import Segmenter

    seg = Segmenter(build_model(clip), device=settings.device)
    crops = torch.randn(2, 3, 512, 512, device=settings.device)
    configured = torch.get_num_threads()
    result: dict[str, Any] = {}
    with section("threads"), torch.inference_mode():
        for threads in sorted({1, configured, os.cpu_count() or 1}):
            torch.set_num_threads(threads)
            seconds = measure(lambda: seg.features(crops), settings.device, warmup=1,
                              repeats=1 if settings.quick else 3)
            result[str(threads)] = median(seconds)
    torch.set_num_threads(configured)
    return result


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    """The figures the issue asks for at the top of results/suite.json."""
    inference = results["inference"]
    summary: dict[str, Any] = {"overhead_ratio": {}, "hardware_ratio": {}, "overhead_ratio_2048": {},
                               "hardware_ratio_2048": {}}
    for name, value in inference.items():
        cases = value["cases"]
        summary["overhead_ratio"][name] = cases["512x683_20"]["overhead_ratio"]
        summary["hardware_ratio"][name] = cases["512x683_20"]["hardware_ratio"]
        if "2048x2048_171" in cases:
            summary["overhead_ratio_2048"][name] = cases["2048x2048_171"]["overhead_ratio"]
            summary["hardware_ratio_2048"][name] = cases["2048x2048_171"]["hardware_ratio"]
    headline = [case for case in results.get("memory", {}).get("headline", [])
                if case["clip"] == "RN50" and not case["text_encoded_here"]]
    if headline:
        summary["peak_rss_mib_4096"] = headline[0]["peak_rss_mib"]
        if "cuda_max_allocated_mib" in headline[0]:
            summary["cuda_max_allocated_mib_4096"] = headline[0]["cuda_max_allocated_mib"]
    if "training" in results:
        summary["train_cache_speedup"] = results["training"]["breakdown"]["train_cache_speedup"]
    return summary


def notes(results: dict[str, Any]) -> list[str]:
    """Remarks that follow from the figures (targets missed, precision support, load)."""
    found: list[str] = []
    machine_info, summary = results["machine"], results["summary"]
    for name, value in results["inference"].items():
        for case, figures in value["cases"].items():
            seconds = figures["predict_seconds"]
            if figures["overhead_ratio"] > 1.15:
                rest = {phase: seconds[phase] for phase in inference_bench.PHASES if phase != "image_tower"}
                biggest = max(rest, key=lambda phase: rest[phase])
                found.append(
                    f"{name}, {case}: overhead ratio {figures['overhead_ratio']:.2f} > 1.15. Outside the tower, "
                    f"{report.PHASE_NAMES[biggest]} takes the most ({seconds[biggest]:.3f} s of {seconds['total']:.3f} s): "
                    "the upsampled label map is output work that `encode_image` does not do (one label per output "
                    "pixel: 4.2 million at 2048x2048), and the resize reads the full-size image.")
            if figures["hardware_ratio"] < 0.5:
                found.append(f"{name}, {case}: hardware ratio {figures['hardware_ratio']:.2f} < 0.5.")
    below = [(name, case, figures["overhead_ratio"]) for name, value in results["inference"].items()
             for case, figures in value["cases"].items() if figures["overhead_ratio"] < 1]
    if below:
        reasons = []
        if any(name.startswith("RN") for name, _, _ in below):
            reasons.append("runs the ResNet tower with its BatchNorms folded into the convolutions and in "
                           "channels-last layout")
        if any(name.startswith("ViT") for name, _, _ in below):
            reasons.append("runs the ViT's last block without attention (MaskCLIP)")
        found.append("Overhead ratios below 1 (" + ", ".join(f"{name} {case}: {ratio:.2f}" for name, case, ratio in below)
                     + "): `predict` " + " and ".join(reasons) + ", where `encode_image` runs open_clip's plain tower.")
    found.append("Labels are found by a pruned search over the classes that can win in each quad of four feature "
                 "cells, so upsampling time depends on how many classes compete near a pixel: random weights give "
                 "label maps of ~10-20 regions here (see 'distinct labels'); a trained model's maps may differ. "
                 "Computing every class (what `return_scores=True` needs anyway) is the upper bound.")
    if results["machine"]["device"] == "cpu" and not machine_info["avx512_bf16"]:
        found.append("This CPU has no AVX512-BF16 (nor AMX), so no native bf16 arithmetic: bf16 autocast is slower "
                     "than fp32 here (see above). It pays on CPUs that have it (`lscpu | grep -o avx512_bf16`) and on "
                     "CUDA.")
    peak = summary.get("peak_rss_mib_4096")
    if peak is not None:
        verdict = "meets" if peak < 2048 else "misses"
        found.append(f"RN50, 4096x4096, 171 classes: process peak {peak:.0f} MiB {verdict} the 2 GiB bound.")
    threads = results.get("threads")
    if threads and len(threads) > 1:
        load = results["sections"].get("threads", {}).get("load_start", [float("nan")])[0]
        found.append("Image tower (RN50, two 512x512 crops) by torch threads, at a load of "
                     f"{load:.1f}: " + ", ".join(f"{count}: {seconds:.2f} s" for count, seconds in threads.items())
                     + f". The figures above use {machine_info['threads']} thread(s) (`--threads`). When other "
                       "processes keep the cores busy, more threads can be slower: every parallel operation waits "
                       "for its slowest thread, and a descheduled one costs a scheduler time slice per "
                       "operation; give torch the free cores (`torch.set_num_threads`).")
    loads = [record["load_start"][0] for record in results["sections"].values()]
    loads += [record["load_end"][0] for record in results["sections"].values()]
    if loads and max(loads) > machine_info["cores"] * 0.75:
        found.append(f"The 1-minute load average reached {max(loads):.1f} on {machine_info['cores']} cores during "
                     "the run: other processes shared the CPU, and timings are noisier than on an idle machine "
                     "(ratios are taken between runs that alternate, which cancels much of it).")
    return found


def students(suffix: str) -> dict[str, Any] | None:
    """The MVP-SEG+ student figures (benchmarks/student_bench.py), when they were measured."""
    path = RESULTS / f"students{suffix}.json"
    if not path.is_file():
        return None
    figures = json.loads(path.read_text())
    world = RESULTS / "student_world.json"  # benchmarks/studies/student_world.py: accuracy
    if world.is_file():
        figures["world"] = json.loads(world.read_text())
    return figures


def require_plotting(no_plots: bool) -> None:
    """Stop at once, in one line, when the plots are wanted but matplotlib (the ``bench`` extra) is missing:
    better than measuring for minutes and failing before the report is written."""
    if no_plots:
        return
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        sys.exit('benchmarks/run.py: the plots need matplotlib, which is not installed: pip install -e ".[bench]" '
                 "(or pass --no-plots to write the results and the report without plots)")


def file_suffix(device: str, quick: bool) -> str:
    """The suffix of every file a run writes (results, student figures, report, plots): ``_quick`` for a quick run,
    so that it never replaces a full run's files, then ``_cuda`` on a GPU."""
    return ("_quick" if quick else "") + ("" if device == "cpu" else f"_{device.split(':')[0]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and curve points")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--end-to-end", action="store_true",
                        help="also time mvpseg.train itself, with and without the feature cache (default in full mode)")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--out", default=None, help="results JSON (default benchmarks/results/suite[_cuda].json)")
    parser.add_argument("--report", default=None, help="Markdown report (default docs/benchmarks[_cuda].md)")
    parser.add_argument("--report-only", action="store_true",
                        help="rebuild the report and plots from an existing results JSON, measure nothing")
    args = parser.parse_args()
    require_plotting(args.no_plots)
    suffix = file_suffix(args.device, args.quick)
    students_suffix = file_suffix(args.device, quick=False)  # the published student figures a report shows
    out = Path(args.out) if args.out else RESULTS / f"suite{suffix}.json"
    report_path = Path(args.report) if args.report else REPOSITORY / "docs" / f"benchmarks{suffix}.md"
    if args.report_only:
        results = json.loads(out.read_text())
        results["notes"] = notes(results)
        figures = [] if args.no_plots else plots.write_all(results, REPOSITORY / "docs", prefix=f"benchmarks{suffix}")
        report.write(results, report_path, figures, students(students_suffix))
        print(f"wrote {report_path}" + "".join(f", {figure}" for figure in figures))
        return
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is available")
    start = time.perf_counter()
    settings = Settings.create(args.device, args.quick, args.threads)
    section = Section()
    results: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(settings.device),
        "settings": {"warmup": settings.warmup, "repeats": settings.repeats},
        "inference": {},
    }
    stash: dict[str, dict[str, Any]] = {}
    for name in CLIPS:
        stash[name] = {}
        full_figures = not args.quick or name == "RN50"
        results["inference"][name] = inference_bench.run(name, settings, section, full_figures, stash[name])
    results["threads"] = threads_comparison(settings, section, stash["RN50"]["clip"])
    results["memory"] = memory_cases(settings, section, stash)
    results["training"] = train_bench.run(settings, section, end_to_end_run=args.end_to_end or not args.quick)
    student_bench.write(settings, section, path=RESULTS / f"students{suffix}.json")
    results["summary"] = summarise(results)
    results["sections"] = section.records
    results["run_seconds"] = time.perf_counter() - start
    results["notes"] = notes(results)
    results_text = json.dumps({"summary": results.pop("summary"), **results}, indent=2, default=float)
    out.write_text(results_text + "\n")
    results = json.loads(results_text)
    figures = [] if args.no_plots else plots.write_all(results, REPOSITORY / "docs", prefix=f"benchmarks{suffix}")
    report.write(results, report_path, figures, students(suffix))
    print(f"wrote {out}, {report_path}" + "".join(f", {figure}" for figure in figures))
    print(json.dumps(results["summary"], indent=2))
    print(f"{results['run_seconds'] / 60:.1f} minutes")


if __name__ == "__main__":
    main()
