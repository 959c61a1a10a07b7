"""The images a command is given: files, folders (``--recursive``: with their subfolders) and quoted
shell-style patterns, each with a unique output name, and split over ``torchrun`` processes.

Imports the standard library only.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["IMAGE_SUFFIXES", "ImageInputs", "InputImage", "collect_images", "shard"]

#: File name endings taken for images inside folders and among pattern matches (case-insensitive).
IMAGE_SUFFIXES = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".dib", ".gif", ".tif", ".tiff", ".webp",
    ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".jp2", ".j2k", ".ico",
})
_GLOB_CHARACTERS = frozenset("*?[")


@dataclass(frozen=True)
class InputImage:
    """One image to process.

    Attributes:
        path: the file.
        name: its output name, unique among the inputs, without suffix; inside a folder its path
            relative to the folder (``sub/photo``), so outputs mirror the folder's layout.
    """

    path: Path
    name: str


@dataclass
class ImageInputs:
    """What the image arguments gave.

    Attributes:
        images: the images in argument order (each folder's and pattern's files sorted by path).
        skipped: files inside folders or matched by patterns that are not images (by their ending).
        problems: one line per argument that gave nothing (a pattern matching no file, a folder
            without images).
    """

    images: list[InputImage] = field(default_factory=list)
    skipped: int = 0
    problems: list[str] = field(default_factory=list)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _folder_files(folder: Path, recursive: bool) -> list[Path]:
    """The files of a folder (and its subfolders), sorted by their path relative to it."""
    if not recursive:
        files = [entry for entry in folder.iterdir() if entry.is_file()]
    else:
        files = [Path(root, name) for root, _, names in os.walk(folder, followlinks=False) for name in names]
        files = [path for path in files if path.is_file()]
    return sorted(files, key=lambda path: path.relative_to(folder).as_posix())


def _unique(name: str, used: set[str]) -> str:
    """``name``, or ``name-2``, ``name-3``, ... when it is taken (and records it as taken)."""
    candidate, number = name, 2
    while candidate in used:
        candidate, number = f"{name}-{number}", number + 1
    used.add(candidate)
    return candidate


def collect_images(arguments: Sequence[str], recursive: bool = False) -> ImageInputs:
    """Expand image arguments: a file is taken as it is (read errors are the caller's to report), a folder
    gives its images, and an argument that is no existing path but holds ``*``, ``?`` or ``[`` is a
    pattern (``**`` crosses folders) giving the images it matches.

    Output names are deterministic: the file's stem, or inside a folder its relative path without
    suffix; a name already taken gets ``-2``, ``-3``, ... in argument order.

    Args:
        arguments: the command line's image arguments.
        recursive: take the images in folders' subfolders too.

    Returns:
        The images, the count of skipped non-image files, and a line per argument that gave nothing.
    """
    found = ImageInputs()
    used: set[str] = set()
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            files = _folder_files(path, recursive)
            images = [file for file in files if _is_image(file)]
            found.skipped += len(files) - len(images)
            if not images:
                found.problems.append(f"{path}: no images in this folder"
                                      + ("" if recursive else " (--recursive takes its subfolders too)"))
            found.images += [InputImage(file, _unique(file.relative_to(path).with_suffix("").as_posix(), used))
                             for file in images]
        elif not path.exists() and _GLOB_CHARACTERS & set(argument):
            files = [Path(match) for match in sorted(glob.glob(argument, recursive=True)) if Path(match).is_file()]
            images = [file for file in files if _is_image(file)]
            found.skipped += len(files) - len(images)
            if not images:
                found.problems.append(f"{argument}: no image matches this pattern")
            found.images += [InputImage(file, _unique(file.stem, used)) for file in images]
        else:
            found.images.append(InputImage(path, _unique(path.stem, used)))
    return found


def shard(items: Sequence[InputImage], rank: int, world_size: int) -> list[InputImage]:
    """This process's share: rank r of W takes items r, r + W, r + 2W, ... (every item goes to exactly one).

    Args:
        items: all inputs, in the same order on every process.
        rank: this process's rank.
        world_size: the number of processes.
    """
    return list(items[rank::world_size])
