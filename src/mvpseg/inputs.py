"""The images a command is given: files, folders (``--recursive``: with their subfolders), quoted
shell-style patterns and lists of paths (``--input-list``), each with a unique output name, split into
a scheduler's shards (``--shard i/N``) and over ``torchrun`` processes.

Imports the standard library only.
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["IMAGE_SUFFIXES", "ImageInputs", "InputImage", "collect_images", "parse_shard", "read_input_list",
           "shard"]

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


#: The files ``mvpseg segment`` writes for an output name N (mvpseg.outputs.output_paths): N.png, N_overlay.png, N.json.
OUTPUT_ENDINGS = (".png", "_overlay.png", ".json")


class _Names:
    """Output names handed out so far: ``name``, or ``name-2``, ``name-3``, ... when it is taken.

    A name is taken when any file it gives (``N.png``, ``N_overlay.png``, ``N.json``) is a file or a folder
    another name gives, compared without case (as macOS and Windows compare names): ``a`` and
    ``a_overlay`` would both write ``a_overlay.png``, so the second of them becomes ``a_overlay-2``.
    """

    def __init__(self) -> None:
        self.files: set[str] = set()  # every output file handed out, case-folded
        self.folders: set[str] = set()  # every folder they sit in, case-folded
        self.next_number: dict[str, int] = {}  # where to resume counting: a million "image" stems stay linear

    def _free(self, name: str) -> bool:
        files = {(name + ending).casefold() for ending in OUTPUT_ENDINGS}
        folders = {parent.casefold() for parent in _parents(name)}
        return not (files & self.files or files & self.folders or folders & self.files)

    def unique(self, name: str) -> str:
        candidate, number = name, self.next_number.get(name, 2)
        if not self._free(candidate):
            candidate = f"{name}-{number}"
            while not self._free(candidate):
                number += 1
                candidate = f"{name}-{number}"
            self.next_number[name] = number + 1
        self.files.update((candidate + ending).casefold() for ending in OUTPUT_ENDINGS)
        self.folders.update(parent.casefold() for parent in _parents(candidate))
        return candidate


def _parents(name: str) -> list[str]:
    """The folders an output name sits in: ``a/b/c`` -> ``a``, ``a/b``."""
    parts = name.split("/")[:-1]
    return ["/".join(parts[: index + 1]) for index in range(len(parts))]


def read_input_list(source: str) -> list[str]:
    """The paths of an input list: one per line (blank lines skipped, no other syntax: a path may hold
    spaces or ``#``); ``-`` reads standard input.

    Raises:
        FileNotFoundError: the list file does not exist.
    """
    if source == "-":
        lines: Iterable[str] = sys.stdin
        return [line.rstrip("\r\n") for line in lines if line.strip()]
    with open(source, encoding="utf-8") as handle:
        return [line.rstrip("\r\n") for line in handle if line.strip()]


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/N"`` as (i, N), 0 <= i < N (a scheduler's job array: ``--shard $SLURM_ARRAY_TASK_ID/N``).

    Raises:
        ValueError: not of that form, or i outside 0..N-1.
    """
    index, _, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        raise ValueError(f"--shard takes i/N (e.g. 0/4: the first of 4 shards), not {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {text}: i counts from 0 to N-1 (the shards of 4 are 0/4, 1/4, 2/4 and 3/4)")
    return i, n


def collect_images(arguments: Sequence[str], recursive: bool = False, listed: Sequence[str] = ()) -> ImageInputs:
    """Expand image arguments: a file is taken as it is (read errors are the caller's to report), a folder
    gives its images, and an argument that is no existing path but holds ``*``, ``?`` or ``[`` is a
    pattern (``**`` crosses folders) giving the images it matches. Listed paths (``--input-list``) are
    files taken as they are, after the arguments.

    Output names are deterministic: the file's stem, or inside a folder its relative path without
    suffix; a name already taken gets ``-2``, ``-3``, ... in argument order, then list order. Taken means
    that one of its output files would be another name's (``a`` and ``a_overlay`` both give
    ``a_overlay.png``) or differ from it only in case.

    Args:
        arguments: the command line's image arguments.
        recursive: take the images in folders' subfolders too.
        listed: paths read from input lists.

    Returns:
        The images, the count of skipped non-image files, and a line per argument that gave nothing.
    """
    found = ImageInputs()
    names = _Names()
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            files = _folder_files(path, recursive)
            images = [file for file in files if _is_image(file)]
            found.skipped += len(files) - len(images)
            if not images:
                found.problems.append(f"{path}: no images in this folder"
                                      + ("" if recursive else " (--recursive takes its subfolders too)"))
            found.images += [InputImage(file, names.unique(file.relative_to(path).with_suffix("").as_posix()))
                             for file in images]
        elif not path.exists() and _GLOB_CHARACTERS & set(argument):
            files = [Path(match) for match in sorted(glob.glob(argument, recursive=True)) if Path(match).is_file()]
            images = [file for file in files if _is_image(file)]
            found.skipped += len(files) - len(images)
            if not images:
                found.problems.append(f"{argument}: no image matches this pattern")
            found.images += [InputImage(file, names.unique(file.stem)) for file in images]
        else:
            found.images.append(InputImage(path, names.unique(path.stem)))
    found.images += [InputImage(Path(entry), names.unique(Path(entry).stem)) for entry in listed]
    return found


def shard(items: Sequence[InputImage], rank: int, world_size: int) -> list[InputImage]:
    """This process's share: rank r of W takes items r, r + W, r + 2W, ... (every item goes to exactly one).

    Args:
        items: all inputs, in the same order on every process.
        rank: this process's rank.
        world_size: the number of processes.
    """
    return list(items[rank::world_size])
