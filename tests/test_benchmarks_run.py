"""benchmarks/run.py without matplotlib: one line saying what to install, before any measurement."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

# Runs benchmarks/run.py as a script with matplotlib hidden (a None entry in sys.modules makes its import
# fail) and the first measurement replaced by an exit that says it was reached.
_SCRIPT = """
import runpy, sys
sys.path.insert(0, {benchmarks!r})
sys.modules["matplotlib"] = None
import inference_bench
def measured(*args, **kwargs):
    raise SystemExit("measurement started")
inference_bench.run = measured
sys.argv = ["benchmarks/run.py", *{argv!r}]
runpy.run_path({script!r}, run_name="__main__")
"""


def _run_without_matplotlib(argv: list[str]) -> subprocess.CompletedProcess[str]:
    code = _SCRIPT.format(benchmarks=str(BENCHMARKS), argv=argv, script=str(BENCHMARKS / "run.py"))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_missing_matplotlib_stops_before_measuring(tmp_path: Path) -> None:
    out, report = tmp_path / "results.json", tmp_path / "report.md"
    result = _run_without_matplotlib(["--quick", "--out", str(out), "--report", str(report)])
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and 'pip install -e ".[bench]"' in lines[0] and "--no-plots" in lines[0]
    assert "measurement started" not in result.stderr and "Traceback" not in result.stderr
    assert not out.exists() and not report.exists()


def test_no_plots_needs_no_matplotlib(tmp_path: Path) -> None:
    result = _run_without_matplotlib(["--quick", "--no-plots", "--out", str(tmp_path / "r.json"),
                                      "--report", str(tmp_path / "r.md")])
    assert "measurement started" in result.stderr  # it went on to measure


def test_a_quick_run_never_writes_the_full_runs_files() -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import run
    finally:
        sys.path.remove(str(BENCHMARKS))
    assert run.file_suffix("cpu", quick=False) == "" and run.file_suffix("cuda:0", quick=False) == "_cuda"
    assert run.file_suffix("cpu", quick=True) == "_quick" and run.file_suffix("cuda", quick=True) == "_quick_cuda"
    source = (BENCHMARKS / "run.py").read_text()
    assert 'student_bench.write(settings, section)' not in source  # its default is the full run's file


def test_the_published_report_is_report_py_output_with_the_hand_written_paragraphs(tmp_path: Path) -> None:
    import json

    sys.path.insert(0, str(BENCHMARKS))
    try:
        import report
        import run
    finally:
        sys.path.remove(str(BENCHMARKS))
    docs = BENCHMARKS.parent / "docs"
    results = json.loads((BENCHMARKS / "results" / "suite.json").read_text())
    results["notes"] = run.notes(results)
    figures = sorted(docs.glob("benchmarks_*_scaling.png"))
    report.write(results, tmp_path / "benchmarks.md", figures, run.students(""))
    regenerated = (tmp_path / "benchmarks.md").read_text()
    for paragraphs in report.hand_written().values():
        assert all(line in regenerated for line in paragraphs if line)
    assert regenerated == (docs / "benchmarks.md").read_text()  # a rerun loses nothing written by hand


def test_the_mode_studys_published_order_and_vanilla_sign() -> None:
    """benchmarks/studies/vit_modes.py: Spearman's rho against the published figures, vanilla against maskclip."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("vit_modes_study", BENCHMARKS / "studies" / "vit_modes.py")
    assert spec is not None and spec.loader is not None
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    assert study.spearman([1, 2, 3], [10, 20, 30]) == 1.0 and study.spearman([1, 2, 3], [3, 2, 1]) == -1.0
    assert abs(study.spearman([1, 1, 2], [1, 2, 3]) - 0.75**0.5) < 1e-12  # ties share their mean rank
    published = study.PUBLISHED
    in_order = sorted(published, key=lambda mode: published[mode][1])  # ascending Context-59
    seeds = {str(s): {mode: {"templates": {"hiou": 10.0 + i + s}} for i, mode in enumerate(in_order)}
             for s in range(2)}
    for s, rows in seeds.items():
        rows["vanilla"] = {"templates": {"hiou": 5.0 if s == "0" else 50.0}}
    order = study.published_order({"seeds": seeds})
    assert order["rho_context59"] == 1.0 and order["modes"] == list(published)
    assert order["vanilla_below_maskclip"] is False and order["vanilla_below_maskclip_every_seed"] is False
    seeds["1"]["vanilla"]["templates"]["hiou"] = 6.0
    assert study.published_order({"seeds": seeds})["vanilla_below_maskclip_every_seed"] is True
