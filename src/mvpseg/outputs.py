"""What ``mvpseg segment`` writes for one image, and whether it is already there.

For an image with output name ``STEM``: ``STEM.png`` (palette PNG of class indices), ``STEM_overlay.png``
(colours and a legend) and ``STEM.json`` (each class's pixel share), each written atomically
(:func:`mvpseg.files.atomic_write`), the summary last. So a run killed at any moment leaves each file
whole or absent. The summary records what made the outputs (:func:`run_record`: the model's kind and
fingerprints, the classes with their synonyms, the background and its threshold, the inference
settings), and an image is done when its summary names it, records the same, and its two pictures are
whole PNGs: :func:`output_state` is what ``--skip-existing`` asks.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .config import to_dict
from .files import atomic_write, write_text
from .viz import colorize, overlay

if TYPE_CHECKING:
    from .inference import Prediction, Segmenter
    from .vocabulary import ClassNames

__all__ = ["output_paths", "output_state", "outputs_done", "run_record", "summary_of", "write_outputs"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"  # the last chunk of every complete PNG


def output_paths(out: str | os.PathLike[str], stem: str) -> tuple[Path, Path, Path]:
    """(labels PNG, overlay PNG, summary JSON) of the image named ``stem``."""
    out = Path(out)
    return out / f"{stem}.png", out / f"{stem}_overlay.png", out / f"{stem}.json"


def run_record(segmenter: Segmenter, classes: Sequence[ClassNames], background: ClassNames | None = None,
               background_threshold: float | None = None) -> dict[str, Any]:
    """What makes a run's outputs what they are, as JSON values: recorded in each summary ("made_with").

    Returns:
        {"model": :meth:`mvpseg.Segmenter.identity` (its kind, weights and config: the ViT mode),
        "classes": each class's names (synonyms included), "background": its names or None,
        "background_threshold", "inference": the settings that change the labels
        (:meth:`mvpseg.InferenceConfig.result_fields`, the window stride in effect, device)}.
    """
    config = segmenter.config
    values = to_dict(config)
    inference: dict[str, Any] = {name: values[name] for name in config.result_fields()}
    inference["stride"] = config.window_stride
    inference["device"] = segmenter.device.type
    return json.loads(json.dumps({
        "model": segmenter.identity(),
        "classes": [_names(entry) for entry in classes],
        "background": None if background is None else _names(background),
        "background_threshold": background_threshold,
        "inference": inference,
    }))


def _names(entry: ClassNames) -> list[str]:
    return [entry] if isinstance(entry, str) else list(entry)


def summary_of(image: str | os.PathLike[str], prediction: Prediction,
               made_with: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON summary of one segmentation: image, size, class names, pixel shares (and GPR's scores), and
    what made it (:func:`run_record`) when given."""
    summary: dict[str, Any] = {
        "image": str(image),
        "size": list(prediction.labels.shape),
        "class_names": prediction.class_names,
        "pixel_share": prediction.class_shares(),
    }
    if prediction.presence is not None:
        summary["presence"] = dict(zip(prediction.class_names, map(float, prediction.presence)))
    if made_with is not None:
        summary["made_with"] = dict(made_with)
    return summary


def write_outputs(out: str | os.PathLike[str], stem: str, image: str | os.PathLike[str], array: np.ndarray,
                  prediction: Prediction, made_with: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write the label PNG, the overlay and the summary of one image, each atomically, the summary last.

    Args:
        out: the output folder.
        stem: the image's output name (may hold folders: ``sub/photo``).
        image: the image's path, recorded in the summary.
        array: (H, W, 3) uint8 RGB, the image as segmented.
        prediction: its segmentation.
        made_with: :func:`run_record` of the run, recorded in the summary for ``--skip-existing``.

    Returns:
        The summary written.
    """
    labels_path, overlay_path, summary_path = output_paths(out, stem)
    label_image = colorize(prediction.labels)
    atomic_write(labels_path, lambda tmp: label_image.save(tmp, format="PNG"))
    picture = overlay(array, prediction.labels, prediction.class_names)
    atomic_write(overlay_path, lambda tmp: picture.save(tmp, format="PNG"))
    summary = summary_of(image, prediction, made_with)
    write_text(summary_path, json.dumps(summary, indent=2))
    return summary


def _whole_png(path: Path) -> bool:
    """Whether ``path`` starts and ends as a complete PNG does (signature, then IEND last)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(len(_PNG_SIGNATURE))
            handle.seek(0, os.SEEK_END)
            if handle.tell() < len(_PNG_SIGNATURE) + len(_PNG_END):
                return False
            handle.seek(-len(_PNG_END), os.SEEK_END)
            return head == _PNG_SIGNATURE and handle.read() == _PNG_END
    except OSError:
        return False


def output_state(out: str | os.PathLike[str], stem: str, image: str | os.PathLike[str], class_names: list[str],
                 made_with: Mapping[str, Any] | None = None) -> tuple[Literal["done", "missing", "different"], str]:
    """Whether the image's three outputs are present, whole, and made the way this run makes them.

    "missing": a file is absent, torn or unreadable (or names another image); "different": the outputs are
    whole but were made with other class names or, when ``made_with`` is given, another model, other
    classes or synonyms, background, threshold or inference settings (or by an mvpseg that did not record
    them); "done" otherwise. No pixel is decoded, so checking costs microseconds.

    Returns:
        (state, reason): the reason names what is missing or what differs.
    """
    labels_path, overlay_path, summary_path = output_paths(out, stem)
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "missing", f"{summary_path.name} is absent or not whole"
    if not isinstance(summary, dict) or summary.get("image") != str(image):
        return "missing", f"{summary_path.name} is of another image"
    if not (_whole_png(labels_path) and _whole_png(overlay_path)):
        return "missing", f"{labels_path.name} or {overlay_path.name} is absent or not whole"
    if summary.get("class_names") != class_names:
        return "different", "other classes"
    if made_with is not None:
        recorded = summary.get("made_with")
        if not isinstance(recorded, dict):
            return "different", "what made them is not recorded"
        for key, value in made_with.items():
            if recorded.get(key) != value:
                return "different", f"another {key.replace('_', ' ')}: {_short(recorded.get(key))} there, {_short(value)} now"
    return "done", ""


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 120 else text[:117] + "..."


def outputs_done(out: str | os.PathLike[str], stem: str, image: str | os.PathLike[str],
                 class_names: list[str], made_with: Mapping[str, Any] | None = None) -> bool:
    """Whether the image's three outputs are present, whole, and made the same way (:func:`output_state` is "done")."""
    return output_state(out, stem, image, class_names, made_with)[0] == "done"
