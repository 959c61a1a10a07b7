"""``mvpseg demo``: the whole method, offline, on the synthetic world, in minutes on a laptop CPU.

It writes the world's train and val splits, trains prompts on the seen classes with the tiny CLIP
shipped in the package, evaluates zero-shot on the val split, and prints the paper's ablation in
miniature: the MaskCLIP template baseline, 1 learnable prompt, K prompts, K prompts + OCLoss, full
MVP-SEG (+ GPR), and MVP-SEG+ (a DeepLabv2 student on the tiny CLIP's trunk, taught by MVP-SEG's
prompts: pseudo-labels, then self-training), each with mIoU(S), mIoU(U) and hIoU. Everything is
seeded: the same seed gives the same numbers.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from open_clip.modified_resnet import ModifiedResNet
from PIL import Image, ImageDraw

from ..build import build_mvpseg, load_mvpseg, load_student
from ..clip import ClipBundle, load_clip
from ..config import (
    DemoConfig,
    InferenceConfig,
    LossWeights,
    MVPSegConfig,
    StudentConfig,
    TrainConfig,
    TransferConfig,
)
from ..data import build_dataset
from ..dense import feature_stride
from ..evaluate import evaluate
from ..files import write_text
from ..inference import Segmenter
from ..train import train
from ..transfer import transfer, write_pseudo_labels
from ..transfer.pseudo import prompts_fingerprint
from ..viz import overlay, prompt_map_grid
from .layout import write_world
from .registry import get_world
from .views import measure_views, view_ceiling, view_figures

__all__ = ["DemoConfig", "ABLATION", "VIEW_ROWS", "DemoSetup", "StudentRow", "demo_setup", "format_results",
           "learned_row_run", "row_train_config", "run_demo", "run_figures", "student_row", "student_transfer_config"]

#: The figures of every run of a row (means over seeds in the row).
KEYS = ("miou_seen", "miou_unseen", "hiou", "miou")


# (row name, model overrides, loss weights): the paper's ablation, one piece added per row.
ABLATION: list[tuple[str, dict[str, Any] | None, LossWeights | None]] = [
    ("templates", None, None),
    ("1-prompt", {"num_prompts": 1, "use_gpr": False}, LossWeights(cls=0.0, oc=0.0)),
    ("k-prompts", {"use_gpr": False}, LossWeights(cls=0.0, oc=0.0)),
    ("k-prompts+ocloss", {"use_gpr": False}, LossWeights(cls=0.0)),
    ("mvp-seg", {"use_gpr": True}, LossWeights()),
]
#: Beyond the paper (``DemoConfig.views_rows``, the parts world's default): MVP-SEG with a term that asks the
#: prompts to split each thing's cells, over the world's things: the view-assignment loss
#: (:func:`mvpseg.losses.view_assignment_loss`) and the map-overlap penalty (:func:`mvpseg.losses.overlap_penalty`,
#: the recommended one; docs/method.md says why).
VIEW_ROWS: list[tuple[str, dict[str, Any] | None, LossWeights | None]] = [
    ("mvp-seg+views", {"use_gpr": True}, LossWeights(views=1.0)),
    ("mvp-seg+overlap", {"use_gpr": True}, LossWeights(overlap=1.0)),
]
_LABELS = {"templates": "MaskCLIP templates (no training)", "1-prompt": "1 learned prompt",
           "k-prompts": "{k} prompts", "k-prompts+ocloss": "{k} prompts + OCLoss",
           "mvp-seg": "{k} prompts + OCLoss + GPR (MVP-SEG)", "gpr-off": "MVP-SEG, GPR switched off at inference",
           "mvp-seg+": "MVP-SEG+ (student taught by MVP-SEG)",
           "mvp-seg+views": "MVP-SEG + views (view-assignment loss, beyond the paper)",
           "mvp-seg+overlap": "MVP-SEG + map-overlap penalty (beyond the paper)"}

#: The prefix of the ``views_*.png`` figures of each view row (MVP-SEG's are ``views_<thing>.png``).
_FIGURES = {"mvp-seg+views": "views-loss_", "mvp-seg+overlap": "overlap_"}


def format_results(rows: list[dict[str, Any]]) -> str:
    """The results as a Markdown table; with part views (the parts world), both measures of where the prompts
    look (part diversity and which prompt leads where: JS over prompt seeds, and differ) and their ceiling."""
    views = any(row.get("views") for row in rows)
    header = "| method | mIoU(S) | mIoU(U) | hIoU | mIoU(U) over seeds |" + (
        " part diversity (JS) | which prompt leads (JS) | differ (part / lead) |" if views else "")
    lines = [header, "|---|---:|---:|---:|---:|" + ("---:|---:|---:|" if views else "")]

    def spread(row: dict[str, Any], key: str) -> str:
        values = [run["views"]["summary"][key] for run in row["seeds"] if run.get("views")]
        values = [value for value in values if value is not None]
        return f"{np.mean(values):.3f} ({min(values):.3f}-{max(values):.3f})" if values else "-"

    ceiling = None
    for row in rows:
        cells = [f"{row[key]:.1f}" if row[key] is not None else "-" for key in ("miou_seen", "miou_unseen", "hiou")]
        unseen = [run["miou_unseen"] for run in row["seeds"] if run["miou_unseen"] is not None]
        cells.append(f"{min(unseen):.1f}-{max(unseen):.1f}" if len(unseen) > 1 else "-")
        if views:
            cells += [spread(row, "js"), spread(row, "lead_js")]
            summary = row.get("views") or {}
            cells.append(f"{summary['differ']:.2f} / {summary['lead_differ']:.2f}"
                         if summary.get("differ") is not None and summary.get("lead_differ") is not None else "-")
            if summary.get("ceiling_js") is not None:
                ceiling = summary
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    if ceiling is not None:
        lines.append("| ceiling: best hard assignment of parts to prompts | - | - | - | - | "
                     f"{ceiling['ceiling_js']:.3f} | {ceiling['ceiling_lead_js']:.3f} | - |")
    return "\n".join(lines)


def _mean(values: list[float | None]) -> float | None:
    """Mean over seeds; None when no seed has a value (e.g. no unseen class in a tiny val split)."""
    present = [value for value in values if value is not None]
    return float(np.mean(present)) if present else None


def _pictures(segmenter: Segmenter, dataset, out: Path, count: int, student: Segmenter | None = None) -> None:
    """Overlays of a few val images, titled (MVP-SEG | MVP-SEG+ when there is a student | ground truth), and
    one image's per-prompt maps."""
    names = list(dataset.info.class_names)
    for index in range(min(count, len(dataset))):
        image, label = dataset.load(index)
        panels = [overlay(image, model.predict(image, names).labels, names)
                  for model in ([segmenter, student] if student is not None else [segmenter])]
        panels.append(overlay(image, np.where(label == 255, 0, label), names))
        titles = ["MVP-SEG", "MVP-SEG+", "ground truth"] if student is not None else ["MVP-SEG", "ground truth"]
        canvas = Image.new("RGB", (sum(panel.width for panel in panels) + 8 * (len(panels) - 1),
                                   max(panel.height for panel in panels) + 16), "white")
        draw = ImageDraw.Draw(canvas)
        left = 0
        for panel, title in zip(panels, titles):
            draw.text((left + 2, 1), title, fill="black")
            canvas.paste(panel, (left, 16))
            left += panel.width + 8
        canvas.save(out / f"overlay_{index}.png")
    # Per-prompt maps of the largest unseen thing (else any unseen class) in the first image that holds one.
    unseen = set(dataset.info.unseen)
    for index in range(len(dataset)):
        image, label = dataset.load(index)
        counts = np.bincount(label[label != 255].ravel(), minlength=len(names))
        present = [c for c in np.argsort(-counts) if counts[c] > 0 and c in unseen]
        if present:
            break
    else:
        return
    target = int(present[0])
    resized = segmenter.resize(image)
    output = segmenter.predict_torch(resized, names)
    maps = output.prompt_maps[0, :, target].cpu().numpy()  # (P, h, w)
    titles = ["global"] + [f"prompt {i}" for i in range(1, maps.shape[0])]
    prompt_map_grid(image, maps, titles).save(out / f"prompt_maps_{names[target].replace(' ', '_')}.png")


def row_train_config(config: DemoConfig, world: Path, name: str, seed: int, out: Path) -> TrainConfig:
    """The prompt-training run of one learned ablation row and seed (also how the shipped world prompts were made).

    Args:
        config: the demo's settings.
        world: the written world (:func:`write_world`).
        name: a learned row of :data:`ABLATION` ("1-prompt", ..., "mvp-seg").
        seed: the prompt-training seed.
        out: the demo's output folder (runs and feature caches go below it).

    Returns:
        The :class:`TrainConfig` of that run.
    """
    overrides, weights = next((row[1], row[2]) for row in ABLATION + VIEW_ROWS if row[0] == name)
    if overrides is None:
        raise ValueError(f"the ablation row {name!r} trains nothing")
    if weights is not None and (weights.views or weights.overlap):  # the view terms act on the world's things
        weights = replace(weights, views_classes=tuple(get_world(config.world).THING_CLASSES))
    model_config = replace(MVPSegConfig(num_prompts=config.num_prompts, num_context=config.num_context,
                                        init_text=config.init_text, vit_mode=config.vit_mode), **overrides)
    # CLIP is frozen: every learned row trains from one cache (per seed) of the augmented views' dense
    # features, with as many views as epochs, so training sees exactly what the uncached path would.
    views = max(math.ceil(config.iters * config.batch_size / config.num_train), 1)
    return TrainConfig(
        dataset="custom", data_root=str(world), clip=config.clip, pretrained=config.clip_weights,
        out=str(out / "runs" / name / f"seed-{seed}"), model=model_config, loss=weights or LossWeights(),
        iters=config.iters, batch_size=config.batch_size, lr=config.lr, optimizer=config.optimizer,
        crop_size=config.crop_size, scale=(4 * config.short_side, config.short_side),  # the world at its one scale
        ratio_range=(1.0, 1.0),  # no rescaling: the tiny CLIP knows the world at one scale only
        seed=seed, num_workers=config.num_workers, precision=config.precision,
        checkpoint_every=config.iters, log_every=max(config.iters // 50, 1),
        feature_cache=str(out / "feature-cache" / f"seed-{seed}"), cache_views=config.cache_views or views)


def _evaluated(segmenter: Segmenter, val, seed: int) -> dict[str, Any]:
    """A run's seed, mIoU(S), mIoU(U), hIoU, mIoU and per_class on ``val``."""
    metrics = evaluate(segmenter, val, progress=False)
    return {"seed": seed, **{key: metrics[key] for key in KEYS}, "per_class": metrics["per_class"]}


def run_figures(segmenter: Segmenter, val, world_module: ModuleType, seed: int, views: bool) -> dict[str, Any]:
    """One run's figures as the demo records them: seed, mIoU(S), mIoU(U), hIoU, mIoU and per_class on ``val``;
    with ``views`` in a world with parts (``HAS_PARTS``), where the prompts look (:func:`measure_views`)."""
    run = _evaluated(segmenter, val, seed)
    if world_module.HAS_PARTS and views:
        run["views"] = measure_views(segmenter, val, [world_module.thing_parts(c) for c in
                                                      range(len(world_module.THING_CLASSES))],
                                     [kind[0] for kind in world_module.PART_KINDS])
    return run


def learned_row_run(train_config: TrainConfig, clip: ClipBundle, val, world_module: ModuleType,
                    inference: InferenceConfig, reuse: bool = False,
                    progress: bool = False) -> tuple[dict[str, Any], Segmenter]:
    """One seed of a learned row, as the demo runs it: train the prompts, evaluate them, measure their views.

    Args:
        train_config: the prompt-training run (:func:`row_train_config`, perhaps changed).
        clip: the CLIP the prompts are trained over.
        val: the world's val split.
        world_module: the world (:func:`mvpseg.world.registry.get_world`).
        inference: how the prompts' Segmenter segments.
        reuse: evaluate the run's ``prompts.safetensors`` when it exists instead of training again.
        progress: show training's progress.

    Returns:
        The run's figures (:func:`run_figures`, views included where the world has parts) and its Segmenter.
    """
    prompts = Path(train_config.out) / "prompts.safetensors"
    if not (reuse and prompts.is_file()):
        prompts = train(train_config, progress=progress)
    segmenter = Segmenter(load_mvpseg(prompts, clip), inference, device="cpu")
    return run_figures(segmenter, val, world_module, train_config.seed, views=True), segmenter


def _row(name: str, label: str, runs: list[dict[str, Any]], tic: float, progress: bool) -> dict[str, Any]:
    """A row of the table: the mean of its runs' figures (one run per seed), each run's figures, the time."""
    row: dict[str, Any] = {"name": name, "label": label}
    row.update({key: _mean([run[key] for run in runs]) for key in KEYS})
    row["per_class"] = {c: _mean([run["per_class"][c] for run in runs]) for c in runs[0]["per_class"]}
    row["spread"] = {key: [min(values), max(values), float(np.std(values))] for key in KEYS
                     if len(values := [run[key] for run in runs if run[key] is not None]) > 1}
    if any(run.get("views") for run in runs):
        row["views"] = {key: _mean([run["views"]["summary"][key] for run in runs])
                        for key in runs[0]["views"]["summary"]}
    row["seeds"] = runs
    row["seconds"] = round(time.perf_counter() - tic, 1)
    if progress:
        spread = "" if len(runs) == 1 else f" (mean of {len(runs)} seeds; mIoU(U) " + \
            ", ".join(f"{run['miou_unseen']:.1f}" for run in runs) + ")"
        print(f"{label}: mIoU(S) {row['miou_seen']:.1f}  mIoU(U) {row['miou_unseen']:.1f}  "
              f"hIoU {row['hiou']:.1f}{spread}", flush=True)
    return row


def student_transfer_config(config: DemoConfig, world: Path, out: Path) -> TransferConfig:
    """The MVP-SEG+ run of the demo: a DeepLabv2 student on the tiny CLIP's own trunk, taught by the
    ``mvp-seg`` row's prompts of the first seed through pseudo-labels written once, then by itself."""
    return TransferConfig(
        dataset="custom", data_root=str(world), prompts=str(out / "runs" / "mvp-seg" / f"seed-{config.seed}" /
                                                            "prompts.safetensors"),
        clip=config.clip, pretrained=config.clip_weights, out=str(out / "runs" / "mvp-seg+" / f"seed-{config.seed}"),
        iters=config.student_iters, self_train_from=config.student_self_train_from,
        batch_size=config.student_batch_size, lr=config.student_lr, optimizer="adamw", weight_decay=1e-4,
        schedule="poly", min_lr=0.0, loss_norm="labelled",  # mvpseg's choices for the world (docs/method.md)
        crop_size=config.student_crop_size, scale=(4 * config.short_side, config.short_side),
        ratio_range=(1.0, 1.0),  # the world's one scale, as for the prompts
        seed=config.seed, num_workers=config.num_workers, precision=config.precision,
        checkpoint_every=config.student_iters, log_every=max(config.student_iters // 50, 1),
        pseudo_labels=str(out / "pseudo-labels" / f"seed-{config.seed}"),
        student=StudentConfig(arch="deeplabv2", head="mvpseg", backbone="clip", output_stride=8,
                              head_channels=config.student_head_channels, freeze_bn="backbone"))


@dataclass
class StudentRow:
    """What :func:`student_row` gives back."""

    figures: dict[str, Any]  # the run as the demo's MVP-SEG+ row records it: seed, mIoU(S), ..., per_class
    segmenter: Segmenter  # the student's
    train_seconds: float | None  # training and loading the student; None when a finished one was reused


def student_row(config: DemoConfig, world: Path, clip: ClipBundle, val, out: Path, *,
                prompts: str | Path | None = None, student: StudentConfig | None = None,
                run_out: str | Path | None = None, pseudo_labels: bool = True, reuse: bool = False,
                progress: bool = False) -> StudentRow:
    """The demo's MVP-SEG+ row: the teacher's pseudo-labels of the world's training images, the student
    trained on them then on its own (:func:`student_transfer_config`), evaluated on ``val``.

    Args:
        config: the demo's settings.
        world: the written world (:func:`write_world`).
        clip: the tiny CLIP (the teacher's, and the student's trunk).
        val: the world's val split.
        out: the demo's output folder (the run's folders lie below it).
        prompts: the teacher's prompts (default: the demo's, the ``mvp-seg`` row's of the first seed).
        student: the student network (default: the demo's).
        run_out: the student run's folder (default: the demo's); the pseudo-labels stay the demo's.
        pseudo_labels: write the teacher's pseudo-labels first (False: they are written already, e.g. by
            an earlier call for another student of the same teacher).
        reuse: load the run's finished ``student.safetensors`` when it exists instead of training again.
        progress: show progress bars.

    Returns:
        The row's figures, the student's Segmenter and its training time.
    """
    run = student_transfer_config(config, world, out)
    changes: dict[str, Any] = {"prompts": prompts, "student": student, "out": run_out}
    given: dict[str, Any] = {key: str(value) if isinstance(value, Path) else value
                             for key, value in changes.items() if value is not None}
    run = replace(run, **given)
    inference = InferenceConfig(short_side=config.short_side, mode="whole")
    if pseudo_labels:
        assert run.pseudo_labels is not None  # student_transfer_config names the folder
        teacher = Segmenter(load_mvpseg(run.prompts, clip), inference, device="cpu")
        write_pseudo_labels(teacher, build_dataset("custom", world, "train"), run.pseudo_labels,
                            progress=progress, teacher={"prompts_sha256": prompts_fingerprint(run.prompts)})
    tic = time.perf_counter()
    finished = Path(run.out) / "student.safetensors"
    reused = reuse and finished.is_file()
    model = load_student(finished if reused else transfer(run, progress=progress), clip)
    seconds = None if reused else round(time.perf_counter() - tic, 1)
    segmenter = Segmenter(model, inference, device="cpu")
    return StudentRow(_evaluated(segmenter, val, config.seed), segmenter, seconds)


@dataclass
class DemoSetup:
    """What every row of a demo shares: the world module, the world on disk, its val split, the CLIP and the
    inference settings (the world's one scale, the whole image)."""

    module: ModuleType
    world: Path
    val: Any
    clip: ClipBundle
    inference: InferenceConfig


def demo_setup(config: DemoConfig, progress: bool = False) -> DemoSetup:
    """Write the demo's world under ``config.out`` (kept when already there) and load what its rows share."""
    world = write_world(Path(config.out) / "world", config.num_train, config.num_val, seed=config.seed,
                        progress=progress, world=config.world)
    return DemoSetup(get_world(config.world), world, build_dataset("custom", world, "val"),
                     load_clip(config.clip, config.clip_weights),
                     InferenceConfig(short_side=config.short_side, mode="whole"))


def run_demo(config: DemoConfig, progress: bool = True) -> list[dict[str, Any]]:
    """Run the demo end to end and write ``results.md``, ``results.json`` and pictures to ``config.out``.

    In the parts world (``config.world == "parts"``) every learned run also measures where its prompts look
    (:mod:`mvpseg.world.views`: each prompt's share of each part, their diversity), a row evaluates the
    MVP-SEG prompts with GPR switched off at inference, and ``views_*.png`` draw the prompts' maps of a few
    unseen things with their parts outlined.

    Args:
        config: the demo's settings.
        progress: show progress bars.

    Returns:
        One dict per row: name, label, miou_seen, miou_unseen, hiou, miou, per_class (means over the
        seeds of a learned row), spread ([min, max, std] over the seeds), views (parts world: the mean part
        diversity), seeds (each seed's figures) and seconds.
    """
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    setup = demo_setup(config, progress)
    world_module, world, val, clip, inference = setup.module, setup.world, setup.val, setup.clip, setup.inference
    # MVP-SEG+'s student stands on the CLIP's own ResNet trunk: a ViT CLIP has none, so it has no such row
    student_iters = config.student_iters if isinstance(clip.model.visual, ModifiedResNet) else 0
    if config.student_iters > 0 and student_iters == 0:
        print(f"no MVP-SEG+ row: its student is built on the CLIP's ResNet trunk and {config.clip} is a "
              f"{type(clip.model.visual).__name__} (mvpseg transfer --backbone resnet101 teaches a student "
              "with another trunk)", file=sys.stderr, flush=True)
    has_parts = world_module.HAS_PARTS
    rows: list[dict[str, Any]] = []
    shown: Segmenter | None = None  # MVP-SEG of the first seed: the pictures' model

    view_rows = config.views_rows if config.views_rows is not None else has_parts
    shown_views: dict[str, Segmenter] = {}  # the first seed of each view row: its figures
    ceiling: dict[str, Any] | None = None
    if has_parts:
        # the world's images are square at the scale the model sees them: the feature grid of that scale
        grid = (config.short_side // feature_stride(clip.model.visual),) * 2
        ceiling = view_ceiling(val, [world_module.thing_parts(c) for c in range(len(world_module.THING_CLASSES))],
                               config.num_prompts, grid)

    def with_ceiling(row: dict[str, Any]) -> dict[str, Any]:
        if ceiling is not None and row.get("views"):
            row["views"].update(ceiling_js=ceiling["js"], ceiling_lead_js=ceiling["lead_js"],
                                ceiling_js_unseen=ceiling["js_unseen"], ceiling_lead_js_unseen=ceiling["lead_js_unseen"])
        return row

    for name, overrides, _weights in ABLATION + (VIEW_ROWS if view_rows else []):
        tic = time.perf_counter()
        label = _LABELS[name].format(k=config.num_prompts)
        runs: list[dict[str, Any]] = []
        for offset in range(1 if overrides is None else config.seeds):
            seed = config.seed + offset
            if overrides is None:
                segmenter = Segmenter(build_mvpseg(clip, None, vit_mode=config.vit_mode), inference, device="cpu")
                run = run_figures(segmenter, val, world_module, seed, views=False)
            else:
                train_config = row_train_config(config, world, name, seed, out)
                if progress:
                    print(f"training: {label}, seed {seed}", flush=True)
                run, segmenter = learned_row_run(train_config, clip, val, world_module, inference, progress=progress)
            runs.append(run)
            if name == "mvp-seg" and offset == 0:
                shown = segmenter
            if name in _FIGURES and offset == 0:
                shown_views[name] = segmenter
        rows.append(with_ceiling(_row(name, label, runs, tic, progress)))
    if has_parts:  # the MVP-SEG prompts of every seed again, the fused map alone
        tic = time.perf_counter()
        runs = []
        for seed in range(config.seed, config.seed + config.seeds):
            model = load_mvpseg(out / "runs" / "mvp-seg" / f"seed-{seed}" / "prompts.safetensors", clip,
                                {"use_gpr": False})
            runs.append(run_figures(Segmenter(model, inference, device="cpu"), val, world_module, seed, views=True))
        rows.append(with_ceiling(_row("gpr-off", _LABELS["gpr-off"], runs, tic, progress)))
    student = None
    if student_iters > 0:
        tic = time.perf_counter()
        label = _LABELS["mvp-seg+"]
        if progress:
            print(f"training: {label}, taught by the MVP-SEG prompts of seed {config.seed}", flush=True)
        result = student_row(config, world, clip, val, out, progress=progress)
        student = result.segmenter
        rows.append(_row("mvp-seg+", label, [result.figures], tic, progress))
    if shown is not None:
        _pictures(shown, val, out, config.overlays, student)
        if has_parts:
            view_figures(shown, val, out, world_module, count=3)
            for name, segmenter in shown_views.items():  # the same things through the view rows' prompts
                view_figures(segmenter, val, out, world_module, count=3, prefix=_FIGURES[name])
    table = format_results(rows)
    run_info = {"config": asdict(config), "seconds": round(time.perf_counter() - start, 1), "student_row": student_iters > 0,
                "unseen": list(val.info.unseen_names), "torch_threads": torch.get_num_threads()}
    if ceiling is not None:
        run_info["view_ceiling"] = ceiling
    write_text(out / "results.json", json.dumps(rows, indent=2))
    write_text(out / "run_info.json", json.dumps(run_info, indent=2))
    write_text(out / "results.md", f"{table}\n\nunseen classes: {', '.join(val.info.unseen_names)}\n")
    return rows
