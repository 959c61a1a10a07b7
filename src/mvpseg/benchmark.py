"""The field's tables in one resumable run: every (benchmark, method) cell evaluated once, under a named protocol.

A cell is one method (MaskCLIP's templates in a ViT mode, learned prompts or a student) on one benchmark's
validation split, under one protocol of :mod:`mvpseg.protocols` (its :class:`mvpseg.InferenceConfig`, its
class file as the text tower's names, the metrics keyed by the dataset's own names). The guarantee:

- **A finished cell is never redone** unless what made it changed: its fingerprint covers the benchmark, the
  ids of the images evaluated (split and limit), the protocol's result fields (any inference flag laid over
  them included) and class file, and the model's identity (:meth:`mvpseg.Segmenter.identity`: kind, CLIP and
  trained weights' fingerprints, config and ViT mode). Speed settings (batch sizes, memory budgets), paths and
  the number of processes are not in it: they do not change the numbers.
- **A killed cell continues where it was**: every ``checkpoint_every`` images the confusion matrix of the images
  done so far (a prefix of the split, all processes together) is written atomically to
  ``OUT/partial/<benchmark>--<method>.safetensors``; the run picks it up when its fingerprint matches. Counts
  are integers and every image is segmented alone, so the final matrix, and every number from it, equals an
  uninterrupted run's, with any number of processes before and after the kill.
- **Nothing but a bug or a kill stops the run**: a benchmark whose data are not there, a bad file, a protocol without
  values for a benchmark or a model that does not load leaves its cells missing, with one line each saying why.

``OUT/results.json`` holds each cell (numbers, per-class IoU, what made it, timing) and ``OUT/results.md`` the
tables in the papers' column order; both are rewritten atomically after every cell. Under ``torchrun`` rank r
segments images r, r + W, ... of every block; only rank 0 reads and writes files and decides (and tells the
others) which cells are done.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from .benchmark_tables import render_results
from .config import InferenceConfig, ModelSource, to_dict
from .data import DataLayoutError, SegmentationDataset, build_dataset
from .data.class_files import class_names_path
from .data.classes import canonical_name
from .data.layouts import LAYOUTS
from .distributed import all_reduce_sum, is_distributed
from .evaluate import accumulate
from .files import atomic_write, write_text
from .inference import Segmenter
from .metrics import ConfusionMatrix
from .protocols import Protocol, get_protocol, protocol_benchmarks
from .version import __version__
from .vocabulary import Vocabulary

__all__ = ["DATA_FOLDERS", "FORMAT", "OWN_PROTOCOLS", "BenchmarkSettings", "Cell", "Method", "fingerprint",
           "protocol_name", "run_benchmark"]

#: The version of results.json's layout.
FORMAT = "mvpseg-benchmark/1"
#: The folder under --data-root each benchmark reads (build_dataset also takes that folder itself as the root).
DATA_FOLDERS: dict[str, str] = {
    "voc21": "VOCdevkit/VOC2012", "voc20": "VOCdevkit/VOC2012", "context60": "VOCdevkit/VOC2010",
    "context59": "VOCdevkit/VOC2010", "pc459": "VOCdevkit/VOC2010", "coco-object": "coco_stuff164k",
    "coco-stuff": "coco_stuff164k", "cityscapes": "cityscapes", "ade20k": "ADEChallengeData2016",
    "ade847": "ADE20K_2021_17_01",
}  # fmt: skip
#: What each folder is downloaded as (docs/datasets.md has the layouts).
_DOWNLOADS = {
    "VOCdevkit/VOC2012": "PASCAL VOC 2012's VOCtrainval_11-May-2012.tar",
    "VOCdevkit/VOC2010": "PASCAL VOC 2010 with PASCAL Context's labels",
    "coco_stuff164k": "COCO 2017 images with COCO-Stuff's stuffthingmaps",
    "cityscapes": "Cityscapes' leftImg8bit and gtFine",
    "ADEChallengeData2016": "ADEChallengeData2016.zip",
    "ADE20K_2021_17_01": "ADE20K_2021_17_01",
}
#: The repository whose protocol each ViT mode is, for ``--protocol own`` (other modes, prompts, students: mvpseg).
OWN_PROTOCOLS: dict[str, str] = {"csa": "sclip", "qq": "clearclip", "qk": "clearclip", "naclip": "naclip",
                                 "resclip": "resclip", "scclip": "scclip"}
@dataclass
class Method:
    """One row of the tables: a label and the model that segments (vit_mode None with templates: the protocol's
    ViT mode where it names one, else the default)."""

    label: str  # the row's name: the ViT mode, prompts:NAME or student:NAME
    source: ModelSource  # which model (mvpseg.ModelSource)


def protocol_name(protocol: str, method: Method, benchmark: str) -> str:
    """The protocol a method is evaluated under on a benchmark: ``protocol``; for ``own`` its ViT mode's
    repository's where :mod:`mvpseg.protocols` has that repository's values for the benchmark, else mvpseg's."""
    if protocol != "own":
        return protocol
    source = method.source
    own = OWN_PROTOCOLS.get(source.vit_mode or "") if source.prompts is None and source.student is None else None
    try:
        return own if own is not None and benchmark in protocol_benchmarks(own) else "mvpseg"
    except ValueError:  # a repository whose values are not filled in yet
        return "mvpseg"


@dataclass
class BenchmarkSettings:
    """What one ``mvpseg benchmark`` run evaluates."""

    benchmarks: list[str]  # the benchmarks, in the tables' order (parse_benchmarks)
    methods: list[Method]  # the rows
    out: Path  # the output folder: results.json, results.md, partial/
    data_root: Path | None = None  # the folder holding the datasets' top folders
    roots: dict[str, Path] = field(default_factory=dict)  # a benchmark's own root, over data_root
    protocol: str = "mvpseg"  # a protocol of mvpseg.protocols, or own: each ViT mode's repository's
    overrides: dict[str, Any] = field(default_factory=dict)  # InferenceConfig fields over the protocol's (dense: a dict)
    limit: int | None = None  # the first N images of each split (smoke runs)
    checkpoint_every: int = 50  # images (all processes together) between two checkpoints of a cell's matrix
    tables: list[tuple[str, list[str]]] = field(default_factory=list)  # (title, columns); default one of benchmarks


@dataclass
class Cell:
    """One (method, benchmark) pair, resolved: its protocol, model source, settings and data, or why it cannot run."""

    method: Method
    benchmark: str
    protocol: Protocol | None = None
    source: ModelSource | None = None  # the method's source, the protocol's ViT mode filled in for templates
    config: InferenceConfig | None = None
    dataset: SegmentationDataset | None = None
    split_images: int = 0  # the split's image count (before any limit)
    status: str = "pending"  # pending, done, missing (no data), failed
    reason: str = ""

    @property
    def total(self) -> int:
        """The images the cell evaluates."""
        return 0 if self.dataset is None else len(self.dataset)

    def missing_record(self) -> dict[str, Any]:
        """A cell that is not done, as results.json keeps it."""
        return {"status": self.status, "reason": self.reason,
                "protocol": None if self.protocol is None else self.protocol.name}


class CellFailed(Exception):
    """A cell could not be evaluated; the message is one line."""


def _one_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return " ".join(text.split())


def _missing_data(benchmark: str, root: Path, error: Exception) -> tuple[str, str]:
    """(status, reason) of a benchmark whose dataset did not open: missing when its folder is absent."""
    folder = DATA_FOLDERS[benchmark]
    names = [folder, *(["coco_object"] if benchmark == "coco-object" else [])]
    present = any((root / name).is_dir() or root.name == Path(name).name or (root / Path(name).name).is_dir()
                  for name in names)
    if present:
        return "failed", _one_line(error)
    prepare = LAYOUTS[canonical_name(benchmark)].prepare
    then = f", then: mvpseg prepare {prepare} {root}" if prepare else ""
    return "missing", (f"no {folder}/ in {root}: get {_DOWNLOADS[folder]}{then} (docs/datasets.md), or give "
                       f"--root {benchmark}=PATH")


def _resolve(settings: BenchmarkSettings) -> tuple[list[Cell], list[str]]:
    """Every cell with its protocol, source, settings and dataset; the one-line messages of what cannot run."""
    datasets: dict[tuple[str, str | None], SegmentationDataset | tuple[str, str]] = {}
    cells, messages = [], []
    for method in settings.methods:
        for benchmark in settings.benchmarks:
            cell = Cell(method=method, benchmark=benchmark)
            cells.append(cell)
            try:
                cell.protocol = get_protocol(protocol_name(settings.protocol, method, benchmark), benchmark)
                cell.config = cell.protocol.inference_config(**settings.overrides)
            except (TypeError, ValueError) as error:
                cell.status, cell.reason = "failed", _one_line(error)
                messages.append(f"{method.label} / {benchmark}: {cell.reason}")
                continue
            cell.source = cell.protocol.source_for(method.source)
            key = (benchmark, cell.protocol.class_file)
            if key not in datasets:
                root = settings.roots.get(benchmark, settings.data_root)
                try:
                    if root is None:
                        raise CellFailed(f"no --data-root and no --root {benchmark}=PATH")
                    names = class_names_path(cell.protocol.class_file) if cell.protocol.class_file else None
                    datasets[key] = build_dataset(benchmark, root, "val", prompt_names_file=names)
                except (CellFailed, OSError, ValueError) as error:
                    status, reason = _missing_data(benchmark, Path(root), error) if isinstance(
                        error, DataLayoutError) and root is not None else ("failed", _one_line(error))
                    datasets[key] = (status, reason)
                    word = "skipped" if status == "missing" else status  # no data: its column skipped
                    messages.append(f"{benchmark}: {word}: {reason}")
            opened = datasets[key]
            if isinstance(opened, tuple):
                cell.status, cell.reason = opened
            else:
                cell.dataset, cell.split_images = opened, len(opened)
                if settings.limit is not None and settings.limit < len(opened):
                    cell.dataset = _first(opened, settings.limit)
    return cells, messages


def _first(dataset: SegmentationDataset, count: int) -> SegmentationDataset:
    """The first ``count`` samples of a split, as evaluate(limit=count) takes them; official size kept."""
    return SegmentationDataset(dataset.info, dataset.ids[:count], dataset.image_paths[:count],
                               dataset.label_paths[:count], dataset.label_lut, split=dataset.split,
                               official_size=dataset.official_size)


def fingerprint(cell: Cell, identity: dict[str, Any], limit: int | None) -> str:
    """SHA-256 of everything that changes a cell's numbers (see the module docstring)."""
    assert cell.dataset is not None and cell.config is not None and cell.protocol is not None
    config = to_dict(cell.config)
    what = {"benchmark": cell.benchmark, "dataset": cell.dataset.info.name, "split": cell.dataset.split,
            "ids": hashlib.sha256("\n".join(cell.dataset.ids).encode()).hexdigest(), "limit": limit,
            "protocol": [cell.protocol.name, cell.protocol.class_file],
            "inference": {name: config[name] for name in InferenceConfig.result_fields()}, "model": identity}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def _from_rank0(tensor: torch.Tensor, rank: int) -> torch.Tensor:
    """Rank 0's value of a tensor on every rank (the others send zeros to the sum)."""
    if not is_distributed():
        return tensor
    return all_reduce_sum(tensor if rank == 0 else torch.zeros_like(tensor))


def _slug(text: str) -> str:
    """A file name for a row label: the label where it is one, else its safe characters and a short hash."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_.")
    return slug if slug == text else f"{slug}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


class _Partial:
    """A cell's checkpoint: the confusion matrix of its first ``done`` images, their seconds, its fingerprint."""

    def __init__(self, folder: Path, cell: Cell) -> None:
        self.path = folder / "partial" / f"{cell.benchmark}--{_slug(cell.method.label)}.safetensors"

    def read(self, fingerprint: str, shape: tuple[int, ...]) -> tuple[int, float, torch.Tensor] | None:
        """(images done, seconds, matrix) when the file is whole and made for this cell, else None."""
        from safetensors import safe_open

        if not self.path.is_file():
            return None
        try:
            with safe_open(str(self.path), framework="pt") as handle:
                meta = json.loads((handle.metadata() or {}).get("mvpseg", "{}"))
                matrix = handle.get_tensor("matrix")
        except Exception:  # noqa: BLE001  # a truncated or foreign file (safetensors' own error type): start again
            return None
        if meta.get("fingerprint") != fingerprint or tuple(matrix.shape) != shape or matrix.dtype != torch.int64:
            return None
        return int(meta["images_done"]), float(meta["seconds"]), matrix

    def write(self, fingerprint: str, done: int, seconds: float, matrix: torch.Tensor) -> None:
        from safetensors.torch import save

        meta = {"mvpseg": json.dumps({"fingerprint": fingerprint, "images_done": done, "seconds": seconds})}
        data = save({"matrix": matrix.cpu().contiguous()}, metadata=meta)
        atomic_write(self.path, lambda tmp: Path(tmp).write_bytes(data))

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


Callback = Callable[[dict[str, Any]], None]


def _counted(indices: Iterable[int], after: Callable[[int], None]) -> Iterator[int]:
    """The indices, calling ``after(index)`` once each image has been added."""
    for index in indices:
        yield index
        after(index)


def _gather_reasons(reason: str | None, world: int) -> str | None:
    """The first rank's failure message, on every rank (None when no rank failed)."""
    failed = int(all_reduce_sum(torch.tensor([reason is not None], dtype=torch.int64))[0])
    if not failed:
        return None
    if not is_distributed():
        return reason
    reasons: list[str | None] = [None] * world
    torch.distributed.all_gather_object(reasons, reason)
    return next(f"rank {r}: {text}" for r, text in enumerate(reasons) if text is not None)


def _evaluate_cell(cell: Cell, segmenter: Segmenter, key: str, partial: _Partial, every: int, rank: int, world: int,
                   bars: Any, callback: Callback) -> dict[str, Any]:
    """The metrics of one cell, from its checkpoint on; the checkpoint written every ``every`` images."""
    assert cell.dataset is not None
    info, total = cell.dataset.info, cell.total
    matrix = ConfusionMatrix(info.num_classes, ignore_index=info.ignore_index)
    restored = partial.read(key, tuple(matrix.matrix.shape)) if rank == 0 else None
    done, seconds = 0, 0.0
    if restored is not None:
        done, seconds, counts = restored
        matrix.matrix += counts
    state = _from_rank0(torch.tensor([done, int(seconds * 1e6)], dtype=torch.int64), rank)
    done, seconds = int(state[0]), float(state[1]) / 1e6
    matrix.matrix = _from_rank0(matrix.matrix, rank)
    if done:
        callback({"event": "resume", "method": cell.method.label, "benchmark": cell.benchmark, "images": done})
    overall, bar = bars
    bar.reset(total=total)
    bar.update(done)
    overall.total -= done
    overall.refresh()
    base = overall.n
    vocabulary = Vocabulary.of(info.text_classes)
    step = max(every, world)

    def after(index: int) -> None:
        bar.update(world)
        overall.update(world)
        callback({"event": "image", "method": cell.method.label, "benchmark": cell.benchmark, "index": index})

    for start in range(done, total, step):
        end = min(start + step, total)
        block = ConfusionMatrix(info.num_classes, ignore_index=info.ignore_index)
        tic, reason = time.perf_counter(), None
        try:
            accumulate(segmenter, cell.dataset, vocabulary, block, _counted(range(start + rank, end, world), after))
        except (OSError, RuntimeError, ValueError) as error:
            reason = _one_line(error)
        reason = _gather_reasons(reason, world)
        if reason is not None:
            raise CellFailed(reason)
        matrix.matrix += all_reduce_sum(block.matrix)
        seconds += float(_from_rank0(torch.tensor([time.perf_counter() - tic], dtype=torch.float64), rank)[0])
        bar.n, overall.n = end, base + end - done
        bar.refresh()
        overall.refresh()
        if rank == 0 and end < total:
            partial.write(key, end, seconds, matrix.matrix)
            callback({"event": "checkpoint", "method": cell.method.label, "benchmark": cell.benchmark,
                      "images": end})
    metrics = matrix.compute(list(info.class_names), list(info.unseen))
    metrics["num_images"] = total
    metrics["seconds"] = round(seconds, 3)
    metrics["images_per_second"] = round(total / seconds, 3) if seconds > 0 else None
    return metrics


def _record(cell: Cell, metrics: dict[str, Any], identity: dict[str, Any], key: str, settings: BenchmarkSettings,
            segmenter: Segmenter, world: int) -> dict[str, Any]:
    """A done cell as results.json keeps it."""
    assert cell.dataset is not None and cell.protocol is not None and cell.config is not None
    return {"status": "done", **metrics, "dataset": cell.dataset.info.name, "split": cell.dataset.split,
            "split_images": cell.split_images,
            "official_images": cell.dataset.official_size, "limit": settings.limit,
            "protocol": cell.protocol.record(), "inference": to_dict(cell.config),
            "overrides": dict(settings.overrides), "source": to_dict(cell.source), "model": identity,
            "fingerprint": key, "mvpseg_version": __version__, "world_size": world, "device": str(segmenter.device),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _load_results(path: Path | None) -> dict[str, Any]:
    """A previous run's results.json (None, or another format: a new one)."""
    if path is not None and path.is_file():
        try:
            results = json.loads(path.read_text(encoding="utf-8"))
            if results.get("format") == FORMAT:
                return dict(results)
        except (OSError, ValueError):
            pass
    return {"format": FORMAT, "cells": {}}


def _log(line: str) -> None:
    print(f"mvpseg: {line}", file=sys.stderr, flush=True)


def run_benchmark(settings: BenchmarkSettings, device: str | torch.device | None = None, progress: bool = True,
                  callback: Callback | None = None, log: Callable[[str], None] | None = _log) -> dict[str, Any]:
    """Evaluate every (method, benchmark) cell not done yet and write ``OUT/results.json`` and ``OUT/results.md``.

    Args:
        settings: the benchmarks, methods, data, protocol and output folder.
        device: where to run (under torchrun: this process's device, from :func:`mvpseg.distributed.init_distributed`).
        progress: tqdm bars, overall and per cell, with images/s and ETA (rank 0).
        callback: called on every rank with each event: {"event": "start" | "skip" | "resume" | "image" |
            "checkpoint" | "done" | "failed", "method", "benchmark", ...}.
        log: where rank 0's one-line messages go (missing data, failed cells); None: nowhere.

    Returns:
        The results as written to results.json: {"format", "mvpseg_version", "benchmarks", "methods", "tables",
        "cells": {method: {benchmark: cell}}} with each requested cell's "status" (done, missing, failed).
    """
    from tqdm import tqdm

    rank, world = 0, 1
    if is_distributed():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    say = log if rank == 0 and log is not None else (lambda line: None)
    notify = callback or (lambda event: None)
    out = Path(settings.out)
    results = _load_results(out / "results.json" if rank == 0 else None)
    tables = settings.tables or [("mIoU, %", list(settings.benchmarks))]
    results.pop("incomplete", None)
    results.update({"mvpseg_version": __version__, "protocol": settings.protocol,
                    "benchmarks": list(settings.benchmarks), "tables": [[t, list(c)] for t, c in tables],
                    "methods": [{"label": m.label, "source": to_dict(m.source)} for m in settings.methods]})
    cells, messages = _resolve(settings)
    for line in dict.fromkeys(messages):  # a benchmark's data are missing for every row and class file alike
        say(line)

    def save(cell: Cell, record: dict[str, Any]) -> None:
        results["cells"].setdefault(cell.method.label, {})[cell.benchmark] = record
        if rank == 0:
            write_text(out / "results.json", json.dumps(results, indent=1) + "\n")
            write_text(out / "results.md", render_results(results))

    pending = [cell for cell in cells if cell.status == "pending"]
    quiet = not progress or rank != 0
    overall = tqdm(total=sum(cell.total for cell in pending), desc="benchmark", unit="image", position=0,
                   disable=quiet, dynamic_ncols=True)
    bar = tqdm(total=0, unit="image", position=1, leave=False, disable=quiet, dynamic_ncols=True)
    for cell in cells:
        if cell.status != "pending":
            save(cell, cell.missing_record())
    by_source: dict[str, list[Cell]] = {}
    for cell in pending:
        by_source.setdefault(json.dumps(to_dict(cell.source), sort_keys=True), []).append(cell)
    for group in by_source.values():
        model: Segmenter | None = None
        try:
            assert group[0].source is not None
            model = Segmenter.from_source(group[0].source, device=device, config=group[0].config)
            identity = model.identity()
        except (OSError, RuntimeError, ValueError) as error:
            for cell in group:
                cell.status, cell.reason = "failed", f"the model did not load: {_one_line(error)}"
                say(f"{cell.method.label} / {cell.benchmark}: failed: {cell.reason}")
                overall.total -= cell.total
                save(cell, cell.missing_record())
                notify({"event": "failed", "method": cell.method.label, "benchmark": cell.benchmark})
            continue
        for cell in group:
            key = fingerprint(cell, identity, settings.limit)
            previous = results["cells"].get(cell.method.label, {}).get(cell.benchmark, {})
            finished = int(_from_rank0(torch.tensor([previous.get("status") == "done" and previous.get(
                "fingerprint") == key], dtype=torch.int64), rank)[0])
            if finished:
                cell.status = "done"
                overall.total -= cell.total
                overall.refresh()
                notify({"event": "skip", "method": cell.method.label, "benchmark": cell.benchmark})
                continue
            notify({"event": "start", "method": cell.method.label, "benchmark": cell.benchmark})
            bar.set_description(f"{cell.method.label} / {cell.benchmark}")
            segmenter = Segmenter(model.model, config=cell.config, device=model.device)
            partial = _Partial(out, cell)
            try:
                metrics = _evaluate_cell(cell, segmenter, key, partial, settings.checkpoint_every, rank, world,
                                         (overall, bar), notify)
            except CellFailed as error:
                cell.status, cell.reason = "failed", str(error)
                say(f"{cell.method.label} / {cell.benchmark}: failed: {cell.reason}")
                save(cell, cell.missing_record())
                notify({"event": "failed", "method": cell.method.label, "benchmark": cell.benchmark})
                continue
            cell.status = "done"
            save(cell, _record(cell, metrics, identity, key, settings, segmenter, world))
            if rank == 0:
                partial.remove()
            notify({"event": "done", "method": cell.method.label, "benchmark": cell.benchmark})
        del model
    bar.close()
    overall.close()
    results["incomplete"] = [f"{cell.method.label} / {cell.benchmark}" for cell in cells if cell.status != "done"]
    if rank == 0:
        write_text(out / "results.json", json.dumps(results, indent=1) + "\n")
        write_text(out / "results.md", render_results(results))
    return results
