"""Scaling curves of ``benchmarks/results/suite.json`` as PNG files (matplotlib: ``pip install -e ".[bench]"``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: The phases drawn in the inference time panels, with their labels.
TIME_PARTS = (("total", "predict (total)"), ("image_tower", "image tower"), ("upsample", "upsampling"),
              ("resize", "resizing"), ("head_matching", "head + matching"))


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def inference_figure(results: dict[str, Any], path: Path) -> Path | None:
    """Time and peak memory of ``predict`` against the image side and the number of classes."""
    clips = {name: value for name, value in results.get("inference", {}).items() if "scaling" in value}
    memory = results.get("memory", {})
    if not clips and not memory:
        return None
    plt = _pyplot()
    figure, axes = plt.subplots(2, 2, figsize=(11, 8.5))
    styles = ("-", "--", ":", "-.")
    for column, (key, axis_name) in enumerate((("by_side", "side"), ("by_classes", "classes"))):
        axis = axes[0, column]
        for clip_index, (name, value) in enumerate(clips.items()):
            points = value["scaling"][key]
            xs = [point[axis_name] for point in points]
            for part_index, (part, label) in enumerate(TIME_PARTS):
                axis.plot(xs, [point["seconds"][part] for point in points], marker="o", linestyle=styles[clip_index],
                          color=f"C{part_index}", label=f"{name}: {label}")
        fixed = next(iter(clips.values()))["scaling"][key][0] if clips else None
        if fixed is not None:
            if axis_name == "side":
                axis.set_title(f"predict time vs image side ({fixed['classes']} classes)", fontsize=10)
            else:
                axis.set_title(f"predict time vs classes ({fixed['side']}x{fixed['side']} image)", fontsize=10)
        axis.set_xlabel("image side (px, square)" if axis_name == "side" else "classes")
        axis.set_ylabel("seconds (median)")
        if axis_name == "side":
            axis.set_xscale("log", base=2)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
        axis = axes[1, column]
        for clip_index, (name, cases) in enumerate(memory.get(key, {}).items()):
            xs = [case[axis_name] for case in cases]
            axis.plot(xs, [case["peak_rss_mib"] for case in cases], marker="o", linestyle=styles[clip_index],
                      color="C0", label=f"{name}: process peak RSS")
            axis.plot(xs, [case["rss_after_load_mib"] for case in cases], marker=".", linestyle=styles[clip_index],
                      color="C7", label=f"{name}: RSS before predict (imports + model)")
            if cases and "cuda_max_allocated_mib" in cases[0]:
                axis.plot(xs, [case["cuda_max_allocated_mib"] for case in cases], marker="s",
                          linestyle=styles[clip_index], color="C3", label=f"{name}: CUDA max allocated")
        axis.axhline(2048, color="C3", linewidth=0.8, linestyle="--", label="2 GiB bound")
        cases = next(iter(memory.get(key, {}).values()), [])
        if cases and axis_name == "side":
            axis.set_title(f"peak memory vs image side ({cases[0]['classes']} classes)", fontsize=10)
        elif cases:
            axis.set_title(f"peak memory vs classes ({cases[0]['side']}x{cases[0]['side']} image)", fontsize=10)
        axis.set_xlabel("image side (px, square)" if axis_name == "side" else "classes")
        axis.set_ylabel("MiB")
        if axis_name == "side":
            axis.set_xscale("log", base=2)
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    return _save(plt, figure, path, results, "images resized to a short side of 512 (the default); memory: a fresh "
                 "process per point")


def training_figure(results: dict[str, Any], path: Path) -> Path | None:
    """Training step time against K and the number of classes."""
    training = results.get("training")
    if not training or "scaling" not in training:
        return None
    plt = _pyplot()
    tower = training["breakdown"]["uncached"]["seconds"]["image_tower"]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for axis, (key, axis_name, label) in zip(axes, (("by_prompts", "num_prompts", "K (segmentation prompts)"),
                                                   ("by_classes", "classes", "seen classes"))):
        points = training["scaling"][key]
        xs = [point[axis_name] for point in points]
        cached = [point["seconds"]["total"] for point in points]
        text = [point["seconds"]["text_forward"] + point["seconds"]["text_backward"] for point in points]
        axis.plot(xs, [value + tower for value in cached], marker="o", label="step from images (tower + rest)")
        axis.plot(xs, cached, marker="o", label="step from the feature cache")
        axis.plot(xs, text, marker=".", linestyle="--", label="text tower forward + backward")
        axis.axhline(tower, color="C7", linestyle=":", label=f"image tower ({tower:.2f} s, batch 4)")
        fixed = "15 classes" if key == "by_prompts" else "K = 3"
        axis.set_title(f"training step vs {label.split(' (')[0]} ({fixed})", fontsize=10)
        axis.set_xlabel(label)
        axis.set_ylabel("seconds (median)")
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    return _save(plt, figure, path, results, "RN50, batch 4, crop 512; the image tower does not depend on K or the "
                 "classes")


def _save(plt: Any, figure: Any, path: Path, results: dict[str, Any], note: str) -> Path:
    """Title a figure with the machine and ``note``, write it to ``path`` and close it."""
    figure.suptitle(_subtitle(results) + "\n" + note, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _subtitle(results: dict[str, Any]) -> str:
    machine = results["machine"]
    where = machine.get("gpu") or f"{machine['cpu']}, {machine['cores']} cores"
    return (f"{where}; torch {machine['torch']}, {machine['threads']} threads, {results['mode']} mode; "
            f"random CLIP weights")


def write_all(results: dict[str, Any], folder: Path, prefix: str = "benchmarks") -> list[Path]:
    """Every figure the results allow, as ``folder/{prefix}_*.png``."""
    folder.mkdir(parents=True, exist_ok=True)
    written = [inference_figure(results, folder / f"{prefix}_inference_scaling.png"),
               training_figure(results, folder / f"{prefix}_training_scaling.png")]
    return [path for path in written if path is not None]
