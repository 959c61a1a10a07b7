"""How long the ``mvpseg`` command takes to answer ``--help``: the current tree, and optionally a git revision.

Each figure is the median wall time of fresh ``python -m mvpseg ... --help`` processes (interpreter
start-up included), with PYTHONPATH pointing at the tree's ``src``. ``--revision REV`` also times the
package as it was at REV (checked out into a temporary git worktree), for a before/after.

    python benchmarks/startup_bench.py [--revision fbc7629] [--repeats 7] [--out benchmarks/results/startup.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parent.parent
COMMANDS = ([], ["segment"], ["train"], ["eval"], ["demo"])


def time_help(source: Path, command: list[str], repeats: int) -> dict[str, Any]:
    """Median and all wall times of ``python -m mvpseg COMMAND --help`` importing mvpseg from ``source``."""
    env = {**os.environ, "PYTHONPATH": str(source)}
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "mvpseg", *command, "--help"], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seconds.append(time.perf_counter() - start)
    return {"command": " ".join(["mvpseg", *command, "--help"]), "median_seconds": statistics.median(seconds),
            "runs": [round(value, 4) for value in seconds]}


def measure(source: Path, repeats: int) -> list[dict[str, Any]]:
    time_help(source, [], 1)  # warm the file cache
    return [time_help(source, command, repeats) for command in COMMANDS]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--revision", default=None, help="also time the package at this git revision")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=None, help="write the results here as JSON")
    args = parser.parse_args()
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu_name(), "cores": os.cpu_count(),
                               "python": platform.python_version(), "load_average": os.getloadavg()[0],
                               "current": measure(REPOSITORY / "src", args.repeats)}
    if args.revision:
        with tempfile.TemporaryDirectory() as folder:
            tree = Path(folder) / "tree"
            subprocess.run(["git", "worktree", "add", "--detach", str(tree), args.revision], cwd=REPOSITORY,
                           check=True, capture_output=True)
            try:
                results["revision"] = {"revision": args.revision, "figures": measure(tree / "src", args.repeats)}
            finally:
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPOSITORY, check=False,
                               capture_output=True)
    text = json.dumps(results, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
