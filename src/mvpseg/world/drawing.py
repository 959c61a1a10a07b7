"""The drawing the worlds share: seeds, stuff backgrounds, pattern textures, colours, captions, the scene record.

- :func:`scene_rng`: the generator of one scene of a split, from the world's seed.
- :class:`Scene`: a drawn scene (image, class labels, caption, spec, part masks where the world has parts).
- **Stuff** (grass, water, sand, sky) fills the background, one kind or two split by a wavy horizon, each
  with its own noise texture and colour range (:func:`stuff_texture`).
- **Patterns** (stripes, dots, checkers, ...): :func:`pattern_mask`, the two-colour textures of the
  patterns world's things and of the parts world's part kinds.
- **Captions**: :func:`describe` names what a label map holds in varied sentences, for any world's classes.

The worlds themselves are :mod:`mvpseg.world.patterns` and :mod:`mvpseg.world.parts`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "STUFF_CLASSES",
    "IGNORE_INDEX",
    "PERIOD_RANGE",
    "Scene",
    "scene_rng",
    "hsv_to_rgb",
    "stuff_texture",
    "pattern_mask",
    "other_stuff",
    "describe",
]

#: Stuff backgrounds (class indices follow the things).
STUFF_CLASSES: tuple[str, ...] = ("grass", "water", "sand", "sky")
#: Label value of pixels to ignore (the world labels every pixel, so it never appears in masks).
IGNORE_INDEX = 255
#: Pattern period range, pixels at 128 px. Periods under ~10 px alias in CLIP's stride-4 stem.
PERIOD_RANGE = (11.0, 20.0)


@dataclass
class Scene:
    """A drawn scene.

    Attributes:
        image: (H, W, 3) uint8 RGB in [0, 255].
        label: (H, W) uint8 class indices into the world's ``CLASS_NAMES``.
        caption: a sentence naming what the image holds.
        spec: the spec it was drawn from (the world's spec class).
        parts: (H, W) uint8 part kind of every thing pixel, 255 elsewhere (the parts world), or None.
    """

    image: np.ndarray
    label: np.ndarray
    caption: str
    spec: Any  # the world's spec: patterns.SceneSpec, parts.PartsSceneSpec
    parts: np.ndarray | None = None  # (H, W) uint8 part kinds of thing pixels (parts world only), else None


def scene_rng(seed: int, split: int, index: int) -> np.random.Generator:
    """The generator of scene ``index`` of ``split`` (0 train, 1 val, 2 pretraining, ...)."""
    return np.random.default_rng(np.random.SeedSequence([seed, split, index]))


# ----------------------------------------------------------------------------- colours and stuff


def hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    """One HSV colour (all in [0, 1]) as an RGB float array in [0, 255]."""
    k = (np.array([5.0, 3.0, 1.0]) + h * 6) % 6
    return 255 * (v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1))


def other_stuff(stuff: tuple[int, ...], rng: np.random.Generator, num_things: int) -> tuple[int, ...]:
    """As many stuff class indices as ``stuff`` holds, none of them in it (a stuff twin's background)."""
    others = [s + num_things for s in range(len(STUFF_CLASSES)) if s + num_things not in stuff]
    return tuple(int(s) for s in rng.choice(others, size=len(stuff), replace=False))


def _smooth_noise(rng: np.random.Generator, size: int, cells: tuple[int, int]) -> np.ndarray:
    """(size, size) float32 noise in about [-1, 1], smooth at the scale of ``cells`` (rows, cols)."""
    coarse = rng.standard_normal(cells).astype(np.float32)
    return np.asarray(Image.fromarray(coarse, mode="F").resize((size, size), Image.Resampling.BICUBIC))


def stuff_texture(kind: str, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 RGB texture of one stuff kind over the whole grid."""
    size = yy.shape[0]
    if kind == "grass":
        base = np.array([60, 140, 50]) + rng.uniform(-25, 25, 3)
        blades = _smooth_noise(rng, size, (6, 48))  # tall thin streaks
        shade = _smooth_noise(rng, size, (4, 4))
        tone = 1 + 0.25 * blades + 0.12 * shade
    elif kind == "water":
        base = np.array([40, 90, 170]) + rng.uniform(-20, 20, 3)
        freq = rng.uniform(0.25, 0.45)
        ripples = np.sin(yy * freq + 2.5 * _smooth_noise(rng, size, (4, 4)))
        tone = 1 + 0.18 * ripples + 0.08 * _smooth_noise(rng, size, (6, 6))
    elif kind == "sand":
        base = np.array([210, 180, 120]) + rng.uniform(-20, 20, 3)
        grain = rng.standard_normal((size, size)).astype(np.float32)
        dunes = np.sin((xx * 0.3 + yy) * rng.uniform(0.06, 0.12) + 3 * _smooth_noise(rng, size, (3, 3)))
        tone = 1 + 0.08 * grain + 0.07 * dunes
    elif kind == "sky":
        base = np.array([120, 175, 235]) + rng.uniform(-20, 15, 3)
        gradient = 0.85 + 0.25 * yy / size
        clouds = np.clip(_smooth_noise(rng, size, (5, 8)) - 0.4, 0, None)
        tone = gradient[..., None] * np.ones(3) + (clouds * 0.5)[..., None] * (255 / base - 1)
        return (base * tone).astype(np.float32)
    else:
        raise ValueError(f"unknown stuff kind {kind!r}")
    return (base * tone[..., None]).astype(np.float32)


def pattern_mask(name: str, u: np.ndarray, v: np.ndarray, period: float, r: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Boolean foreground of a thing's pattern at rotated coordinates (u, v), pixels; (r, theta) polar."""
    fu, fv = u / period, v / period  # coordinates in periods
    wu, wv = fu - np.floor(fu), fv - np.floor(fv)  # position inside the cell, [0, 1)
    if name == "stripes":
        return wu < 0.5
    if name == "dots":
        return (wu - 0.5) ** 2 + (wv - 0.5) ** 2 < 0.3**2
    if name == "checkers":
        return (np.floor(fu) + np.floor(fv)) % 2 == 0
    if name == "zigzag":
        tri = np.abs(2 * (fu * 0.5 - np.floor(fu * 0.5 + 0.5)))  # triangle wave in [0, 1]
        s = fv + 0.8 * tri
        return s - np.floor(s) < 0.5
    if name == "bricks":
        row = np.floor(fv)  # bricks one period high, two periods long
        shifted = 0.5 * fu + 0.5 * (row % 2)
        mortar = (fv - row < 0.2) | (shifted - np.floor(shifted) < 0.1)
        return ~mortar
    if name == "waves":
        s = fv + 0.6 * np.sin(2 * np.pi * fu * 0.25)  # smooth and long, unlike zigzag
        return s - np.floor(s) < 0.5
    if name == "grid":
        return (wu < 0.22) | (wv < 0.22)
    if name == "rings":
        s = r / (0.8 * period)
        return s - np.floor(s) < 0.5
    if name == "diamonds":
        return np.abs(wu - 0.5) + np.abs(wv - 0.5) < 0.35
    if name == "crosses":
        du, dv = np.abs(wu - 0.5), np.abs(wv - 0.5)
        return ((du < 0.12) & (dv < 0.38)) | ((dv < 0.12) & (du < 0.38))
    if name == "spiral":
        s = r / (1.1 * period) + theta / (2 * np.pi)
        return s - np.floor(s) < 0.5
    if name == "honeycomb":
        # hexagonal cells with thin walls: the nearest centre of two offset rectangular lattices,
        # measured in the hexagon norm (a cell's edge lies at norm a / 2)
        a = period
        height = a * 1.7320508  # row spacing of one lattice, a * sqrt(3)
        nearest = None
        for shift_u, shift_v in ((0.0, 0.0), (0.5 * a, 0.5 * height)):
            du = u - shift_u
            dv = v - shift_v
            du = np.abs(du - a * np.round(du / a))
            dv = np.abs(dv - height * np.round(dv / height))
            norm = np.maximum(du, 0.5 * du + 0.8660254 * dv)
            nearest = norm if nearest is None else np.minimum(nearest, norm)
        assert nearest is not None  # the loop above ran over both lattices
        return nearest < 0.4 * a
    raise ValueError(f"unknown thing pattern {name!r}")


# ----------------------------------------------------------------------------- captions

_WITH_STUFF = (
    "{things} on {stuff}.",
    "a photo of {things} on {stuff}.",
    "{things} over the {stuff}.",
    "a picture of {things} in front of {stuff}.",
    "{stuff} with {things}.",
    "an image of {things} and {stuff}.",
    "there is {things} on the {stuff}.",
    "{things}, {stuff}.",
)
_THINGS_ONLY = (
    "{things}.",
    "a photo of {things}.",
    "a photo of a {things}.",
    "a picture of {things}.",
    "an image with {things}.",
    "there is {things}.",
    "this is {things}.",
    "{things} pattern.",
    "a drawing of {things}.",
    "a shape with {things}.",
)


_STUFF_ONLY = (
    "{stuff}.",
    "a photo of {stuff}.",
    "a picture of the {stuff}.",
    "an image of {stuff}.",
    "there is {stuff}.",
    "a background of {stuff}.",
)


def _join(words: list[str]) -> str:
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " and " + words[-1]


def describe(
    label: np.ndarray, rng: np.random.Generator, thing_names: tuple[str, ...], stuff_names: tuple[str, ...],
    min_fraction: float = 0.015, stuff_probability: float = 0.5, stuff_only: bool = False,
) -> str:
    """:func:`caption` for any world: class ``c`` of ``label`` is ``thing_names[c]``, then the stuff names follow."""
    num_things = len(thing_names)
    names = thing_names + stuff_names
    counts = np.bincount(label.ravel(), minlength=len(names))
    total = label.size
    things = [c for c in np.argsort(-counts[:num_things]) if counts[c] >= min_fraction * total]
    stuff = [c for c in np.argsort(-counts[num_things:]) + num_things if counts[c] >= 0.1 * total]
    if stuff_only and stuff:
        template = _STUFF_ONLY[int(rng.integers(len(_STUFF_ONLY)))]
        return template.format(stuff=_join([names[c] for c in stuff]))
    if rng.random() < 0.5:
        rng.shuffle(things)
    thing_words = _join([names[c] for c in things]) if things else "nothing"
    if stuff and rng.random() < stuff_probability:
        template = _WITH_STUFF[int(rng.integers(len(_WITH_STUFF)))]
        return template.format(things=thing_words, stuff=_join([names[c] for c in stuff]))
    template = _THINGS_ONLY[int(rng.integers(len(_THINGS_ONLY)))]
    return template.format(things=thing_words)
