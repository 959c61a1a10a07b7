"""Pictures: the overlay's legend shows the classes found, and only those."""

from __future__ import annotations

import numpy as np

from mvpseg.viz import overlay, palette


def test_the_legend_lists_the_classes_found_and_no_other() -> None:
    labels = np.zeros((48, 64), np.int64)
    labels[:, 40:] = 2  # classes 0 and 2 present; 1 and 3 absent
    picture = np.asarray(overlay(np.full((48, 64, 3), 128, np.uint8), labels, ["sky", "cat", "grass", "dog"]))
    strip = picture[:, 64:]  # the legend, right of the photo
    assert strip.shape[1] > 0
    colors = {tuple(int(c) for c in pixel) for pixel in strip.reshape(-1, 3)}  # (H * w, 3) -> distinct colours
    swatches = {tuple(int(c) for c in palette()[index]) for index in range(4)}
    assert colors & swatches == {tuple(int(c) for c in palette()[0]), tuple(int(c) for c in palette()[2])}
    # Largest class first: grass (24 of 64 columns) below sky (40).
    column = strip[:, 6 + 6]  # through the swatches (left 6, side 12)
    rows = [tuple(int(c) for c in pixel) for pixel in column if tuple(int(c) for c in pixel) in swatches]
    assert rows[0] == tuple(int(c) for c in palette()[0]) and rows[-1] == tuple(int(c) for c in palette()[2])
