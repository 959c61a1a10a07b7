"""Before and after: the ``Segmenter`` of another git revision against the current one.

The other revision's ``src/mvpseg/inference.py`` is read with ``git show`` and imported next to the
current one; both segment the same images with the same model and text embeddings, runs alternating.

    python benchmarks/compare_baseline.py --baseline a0918f8 [--quick]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import memory_bench
import numpy as np
import torch
from common import Section, Settings, build_model, median, random_clip, scene, segmenter, vocabulary
from inference_bench import CASES, PhaseTimer

REPOSITORY = Path(__file__).resolve().parent.parent

#: The last commit before the speed and memory work on inference.py.
DEFAULT_BASELINE = "a0918f8"


def baseline_module(revision: str, folder: Path) -> tuple[ModuleType, Path]:
    """Import ``src/mvpseg/inference.py`` of ``revision`` as ``mvpseg._baseline_inference``."""
    source = subprocess.run(["git", "show", f"{revision}:src/mvpseg/inference.py"], cwd=REPOSITORY,
                            capture_output=True, text=True, check=True).stdout
    path = folder / "baseline_inference.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("mvpseg._baseline_inference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module, path


def compare_case(before: Any, after: Any, image: np.ndarray, names: list[str], settings: Settings,
                 repeats: int) -> dict[str, Any]:
    """Median phases of both Segmenters (alternating runs) and how many labels agree."""
    timers = {"before": PhaseTimer(before), "after": PhaseTimer(after)}
    runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    labels: dict[str, np.ndarray] = {}
    try:
        for index in range(settings.warmup + repeats):
            for key, timer in timers.items():
                phases, prediction = timer.predict(image, names)
                labels[key] = prediction.labels
                if index >= settings.warmup:
                    runs[key].append(phases)
    finally:
        for timer in timers.values():
            timer.remove()
    result: dict[str, Any] = {key: {phase: median([run[phase] for run in values]) for phase in values[0]}
                              for key, values in runs.items()}
    result["label_agreement_percent"] = float((labels["before"] == labels["after"]).mean() * 100)
    return result


def run(settings: Settings, section: Section, revision: str, stash: dict[str, dict[str, Any]] | None = None,
        clips: tuple[str, ...] = ("RN50",), memory: bool = True) -> dict[str, Any]:
    """Before/after rows for ``clips`` and both inference cases, and the 4096x4096 peak memory (RN50).

    Args:
        settings: device, repeats.
        section: records durations and load.
        revision: git revision of the "before" inference.py.
        stash: per CLIP, a calibrated ``clip`` and 171-class ``text`` from an earlier run (saves the text tower).
        clips: CLIPs to compare.
        memory: also the peak memory of the 4096x4096 case in fresh processes.
    """
    device = settings.device
    repeats = 1 if settings.quick else min(settings.repeats, 3)
    result: dict[str, Any] = {"baseline": revision, "rows": [], "memory": []}
    with tempfile.TemporaryDirectory() as tmp:
        module, path = baseline_module(revision, Path(tmp))
        for name in clips:
            stashed = (stash or {}).get(name, {})
            clip = stashed.get("clip") or random_clip(name, device)
            model = build_model(clip)
            after = segmenter(clip, model, device)
            before = module.Segmenter(model, clip, device=device)
            names = vocabulary(171)
            if stashed.get("text") is not None:
                after._text_cache[tuple(names)] = stashed["text"]
            text = after.text_embeddings(names)
            before._text_cache = after._text_cache  # the same embeddings for both
            for case, shape, count in CASES:
                with section(f"before/after: {name} {case}"):
                    case_names = vocabulary(count)
                    if count != 171:
                        after.text_embeddings(case_names)
                    row = compare_case(before, after, scene(*shape, seed=1), case_names, settings, repeats)
                    result["rows"].append({"clip": name, "case": case, "runs": repeats, **row})
            if memory and name == "RN50":
                with section(f"before/after: {name} memory 4096"):
                    inputs = memory_bench.save_inputs(Path(tmp), clip, text)
                    threads = torch.get_num_threads()
                    old = memory_bench.measure(name, 4096, 171, inputs, str(device), threads, inference_file=str(path))
                    new = memory_bench.measure(name, 4096, 171, inputs, str(device), threads)
                    result["memory"].append({"clip": name, "side": 4096, "classes": 171,
                                             "before": old["peak_rss_mib"], "after": new["peak_rss_mib"],
                                             "before_case": old, "after_case": new})
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default=DEFAULT_BASELINE, help="git revision of the 'before' inference.py")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    settings = Settings.create(args.device, args.quick, args.threads)
    print(json.dumps(run(settings, Section(), args.baseline), indent=2, default=str))


if __name__ == "__main__":
    main()
