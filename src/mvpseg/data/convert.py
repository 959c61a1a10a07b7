"""Running a ``mvpseg prepare`` conversion over many files: a progress bar, worker processes, a count.

Each conversion writes its outputs atomically (:func:`mvpseg.files.atomic_write`), so whatever a killed run
leaves is either complete or absent, and skips what is there already, so that a rerun finishes the job.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from multiprocessing import Pool
from typing import TypeVar

from tqdm import tqdm

__all__ = ["run_conversions"]

T = TypeVar("T")


def run_conversions(
    convert: Callable[[T], object], items: Sequence[T], desc: str, num_workers: int = 1, progress: bool = True
) -> int:
    """Call ``convert(item)`` for every item, in worker processes when asked, with a tqdm bar.

    Args:
        convert: a picklable function (module level, or a functools.partial of one) that writes one item's outputs.
        items: the items (source paths, or tuples of them).
        desc: the bar's label.
        num_workers: processes (1 = convert in this process).
        progress: show the bar.

    Returns:
        The number of items converted.
    """
    bar = tqdm(total=len(items), desc=desc, unit="file", disable=not progress)
    try:
        if num_workers > 1 and len(items) > 1:
            with Pool(min(num_workers, len(items))) as pool:
                for _ in pool.imap_unordered(convert, items, chunksize=16):
                    bar.update()
        else:
            for item in items:
                convert(item)
                bar.update()
    finally:
        bar.close()
    return len(items)
