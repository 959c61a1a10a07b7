"""What ``mvpseg segment`` writes for one image, and whether it is already there.

For an image with output name ``STEM``: ``STEM.png`` (palette PNG of class indices), ``STEM_overlay.png``
(colours and a legend) and ``STEM.json`` (each class's pixel share), each written atomically
(:func:`mvpseg.files.atomic_write`), the summary last. So a run killed at any moment leaves each file
whole or absent, and an image is done when its summary names it with the same classes and its two
pictures are whole PNGs: :func:`outputs_done` is what ``--skip-existing`` asks.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .files import atomic_write, write_text
from .viz import colorize, overlay

if TYPE_CHECKING:
    from .inference import Prediction

__all__ = ["output_paths", "outputs_done", "summary_of", "write_outputs"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"  # the last chunk of every complete PNG


def output_paths(out: str | os.PathLike[str], stem: str) -> tuple[Path, Path, Path]:
    """(labels PNG, overlay PNG, summary JSON) of the image named ``stem``."""
    out = Path(out)
    return out / f"{stem}.png", out / f"{stem}_overlay.png", out / f"{stem}.json"


def summary_of(image: str | os.PathLike[str], prediction: Prediction) -> dict[str, Any]:
    """The JSON summary of one segmentation: image, size, class names, pixel shares (and GPR's scores)."""
    summary: dict[str, Any] = {
        "image": str(image),
        "size": list(prediction.labels.shape),
        "class_names": prediction.class_names,
        "pixel_share": prediction.class_shares(),
    }
    if prediction.presence is not None:
        summary["presence"] = dict(zip(prediction.class_names, map(float, prediction.presence)))
    return summary


def write_outputs(out: str | os.PathLike[str], stem: str, image: str | os.PathLike[str], array: np.ndarray,
                  prediction: Prediction) -> dict[str, Any]:
    """Write the label PNG, the overlay and the summary of one image, each atomically, the summary last.

    Args:
        out: the output folder.
        stem: the image's output name (may hold folders: ``sub/photo``).
        image: the image's path, recorded in the summary.
        array: (H, W, 3) uint8 RGB, the image as segmented.
        prediction: its segmentation.

    Returns:
        The summary written.
    """
    labels_path, overlay_path, summary_path = output_paths(out, stem)
    label_image = colorize(prediction.labels)
    atomic_write(labels_path, lambda tmp: label_image.save(tmp, format="PNG"))
    picture = overlay(array, prediction.labels, prediction.class_names)
    atomic_write(overlay_path, lambda tmp: picture.save(tmp, format="PNG"))
    summary = summary_of(image, prediction)
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


def outputs_done(out: str | os.PathLike[str], stem: str, image: str | os.PathLike[str],
                 class_names: list[str]) -> bool:
    """Whether the image's three outputs are present and whole, for this image and these classes.

    The summary must parse and name the same image and class names (a run with other classes redoes
    it), and both PNGs must be complete files; no pixel is decoded, so checking costs microseconds.
    """
    labels_path, overlay_path, summary_path = output_paths(out, stem)
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(summary, dict) or summary.get("image") != str(image) or summary.get("class_names") != class_names:
        return False
    return _whole_png(labels_path) and _whole_png(overlay_path)
