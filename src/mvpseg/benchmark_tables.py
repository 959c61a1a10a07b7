"""The tables of ``mvpseg benchmark``: which benchmarks a run names, results.json's cells as the papers print
them, and where each number came from.

Rows are methods, columns benchmarks in the papers' order, then the average over the cells present (marked ``*``
when a row is incomplete) and the protocol of the row (``mixed``: each cell names its own). A cell that is not
there is ``-``, and the lines under the table say why. Only what made the numbers is printed, never timings, so
that a resumed run's page is the uninterrupted run's. Only the standard library is imported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .protocols import BENCHMARKS, CROSS_DATASET_BENCHMARKS, TRAINING_FREE_BENCHMARKS

__all__ = ["parse_benchmarks", "provenance_lines", "render_results", "table_groups"]

#: The benchmark names of mvpseg's datasets where the tables name them otherwise.
_BENCHMARK_OF = {"voc": "voc20", "context": "context59"}


def parse_benchmarks(spec: str) -> list[str]:
    """``all``, ``training-free``, ``cross-dataset`` or comma-separated names (aliases such as ``ade150`` accepted).

    Raises:
        ValueError: an unknown name (one line naming the valid ones).
    """
    groups = {"all": TRAINING_FREE_BENCHMARKS + ("ade847", "pc459"), "training-free": TRAINING_FREE_BENCHMARKS,
              "cross-dataset": CROSS_DATASET_BENCHMARKS}
    names: list[str] = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        if item.lower() in groups:
            names += groups[item.lower()]
            continue
        try:
            from .data.classes import canonical_name

            key = canonical_name(item)
        except ValueError:
            key = ""
        key = _BENCHMARK_OF.get(key, key)
        if key not in BENCHMARKS:
            raise ValueError(f"unknown benchmark {item!r}; give all, training-free, cross-dataset or names from: "
                             f"{', '.join(BENCHMARKS)}")
        names.append(key)
    if not names:
        raise ValueError("no benchmark given: all, training-free, cross-dataset or names such as voc21,ade20k")
    return list(dict.fromkeys(names))


def table_groups(spec: str, benchmarks: Sequence[str]) -> list[tuple[str, list[str]]]:
    """The tables of a run: (title, columns). ``all`` gives the two of the papers, a group its own, a list one."""
    key = spec.strip().lower()
    if key == "all":
        return [("Training-free (mIoU, %)", list(TRAINING_FREE_BENCHMARKS)),
                ("Cross-dataset (mIoU, %)", list(CROSS_DATASET_BENCHMARKS))]
    if key == "cross-dataset":
        return [("Cross-dataset (mIoU, %)", list(CROSS_DATASET_BENCHMARKS))]
    if key == "training-free":
        return [("Training-free (mIoU, %)", list(TRAINING_FREE_BENCHMARKS))]
    return [("mIoU, %", list(benchmarks))]




def _protocol(cell: dict[str, Any] | None) -> str | None:
    """The protocol's name of a cell (done cells keep the whole record, the others its name)."""
    if not cell:
        return None
    value = cell.get("protocol")
    return value.get("name") if isinstance(value, dict) else value


def _done(cell: dict[str, Any] | None) -> bool:
    return cell is not None and cell.get("status") == "done" and cell.get("miou") is not None


def _reason(cell: dict[str, Any] | None) -> str:
    if not cell:
        return "not evaluated yet (the run stopped before it)"
    if cell.get("status") == "done":
        return "no class in its ground truth or predictions"
    return str(cell.get("reason") or cell.get("status"))


def _table(title: str, columns: list[str], methods: list[str], cells: dict[str, dict[str, Any]]) -> list[str]:
    lines = [f"## {title}", "", "| method | " + " | ".join(columns) + " | Avg | protocol |",
             "|---|" + "---:|" * (len(columns) + 1) + "---|"]
    missing: list[str] = []
    incomplete = False
    for method in methods:
        row = [cells.get(method, {}).get(benchmark) for benchmark in columns]
        protocols = list(dict.fromkeys(name for cell in row if _done(cell) and (name := _protocol(cell))))
        mixed = len(protocols) > 1
        shown, values = [], []
        for benchmark, cell in zip(columns, row):
            if _done(cell):
                assert cell is not None
                values.append(float(cell["miou"]))
                shown.append(f"{cell['miou']:.1f}" + (f" ({_protocol(cell)})" if mixed else ""))
            else:
                shown.append("-")
                missing.append(f"- {method} / {benchmark}: {_reason(cell)}")
        average = "-"
        if values:
            average = f"{sum(values) / len(values):.1f}" + ("*" if len(values) < len(columns) else "")
            incomplete |= len(values) < len(columns)
        protocol = "mixed" if mixed else (protocols[0] if protocols else "-")
        lines.append(f"| {method} | " + " | ".join(shown) + f" | {average} | {protocol} |")
    lines.append("")
    if incomplete:
        lines += ["\\* the average of the cells present only: the row is incomplete.", ""]
    if missing:
        lines += ["Missing cells:", "", *missing, ""]
    return lines


def _images(cell: dict[str, Any]) -> str:
    """"12 images, the official size", "4 of 6 images (limit 4); the official val has 2000 (...)" and the like."""
    evaluated, split, official = cell.get("num_images"), cell.get("split_images"), cell.get("official_images")
    text = f"{evaluated} images" if evaluated == split else f"{evaluated} of {split} images (limit {cell.get('limit')})"
    if official is None:
        return text
    if split == official:
        return f"{text}, the official size"
    return f"{text}; the official {cell.get('split')} has {official} (a partial or another copy)"


def provenance_lines(results: dict[str, Any]) -> list[str]:
    """One line per done cell of the tables: method / benchmark: dataset, split, images against the official
    count, protocol and class file."""
    lines: list[str] = []
    seen: set[tuple[str, str]] = set()
    for _, columns in results.get("tables", []):
        for method in (entry["label"] for entry in results.get("methods", [])):
            for benchmark in columns:
                cell = results.get("cells", {}).get(method, {}).get(benchmark)
                if (method, benchmark) in seen or not cell or cell.get("status") != "done":
                    continue
                seen.add((method, benchmark))
                protocol = cell.get("protocol", {})
                names = protocol.get("class_file") or "the dataset's class names"
                lines.append(f"{method} / {benchmark}: {cell.get('dataset')} {cell.get('split')}, {_images(cell)}; "
                             f"protocol {protocol.get('name')} ({names})")
    return lines


def render_results(results: dict[str, Any]) -> str:
    """results.md: a title, each table with its missing cells, then where each number came from."""
    methods = [entry["label"] for entry in results.get("methods", [])]
    lines = ["# mvpseg benchmark", ""]
    for title, columns in results.get("tables", []):
        lines += _table(title, list(columns), methods, results.get("cells", {}))
    provenance = provenance_lines(results)
    if provenance:
        lines += ["## Where each number came from", "", *(f"- {line}" for line in provenance), ""]
    lines += ["Each cell's numbers, per-class IoU, settings, model and timing: results.json.", ""]
    return "\n".join(lines)
