"""The patterns world: patterned things over stuff backgrounds, with exact masks.

Every image is drawn from a :class:`SceneSpec` (what is where), itself sampled from a seed, so the
same seed always gives the same image, mask and caption. Drawing is vectorised NumPy over the whole
image grid (a few milliseconds per 128 px image); the stuff, the patterns and the captions are the
shared drawing of :mod:`mvpseg.world.drawing`.

- **Things** are smooth blobs filled with a two-colour *pattern* (stripes, dots, checkers, ...).
  The pattern alone names the thing: colours, size, position, rotation and pattern scale are
  random, so colour is no shortcut. Later things occlude earlier ones.
- **Stuff** (grass, water, sand, sky) fills the background, one kind or two split by a wavy
  horizon, each with its own noise texture and colour range.
- **Captions** name what an image holds in varied sentences: things always (largest first or
  shuffled), stuff only sometimes, so that stuff alone cannot solve CLIP's contrastive task.
  Twin scenes (same layout and colours, one thing's class changed) give hard negatives.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from mvpseg.world.drawing import (
    IGNORE_INDEX,
    PERIOD_RANGE,
    STUFF_CLASSES,
    Scene,
    describe,
    hsv_to_rgb,
    other_stuff,
    pattern_mask,
    scene_rng,
    stuff_texture,
)

__all__ = [
    "HAS_PARTS",
    "THING_CLASSES",
    "STUFF_CLASSES",
    "CLASS_NAMES",
    "UNSEEN_CLASSES",
    "IMAGE_SIZE",
    "IGNORE_INDEX",
    "Thing",
    "SceneSpec",
    "Scene",
    "sample_spec",
    "twin_spec",
    "render",
    "caption",
    "generate_scene",
    "scene_rng",
]

#: This world's things have no parts (no ``PART_KINDS``, no part masks); see :mod:`mvpseg.world.registry`.
HAS_PARTS = False

#: Things, identified by the pattern inside them (index order = class index).
THING_CLASSES: tuple[str, ...] = (
    "stripes",
    "dots",
    "checkers",
    "zigzag",
    "bricks",
    "waves",
    "grid",
    "rings",
    "diamonds",
    "crosses",
    "spiral",
    "honeycomb",
)
#: All class names in index order: things, then stuff.
CLASS_NAMES: tuple[str, ...] = THING_CLASSES + STUFF_CLASSES
#: The fixed zero-shot split: names never used when training prompts (things and stuff both).
UNSEEN_CLASSES: tuple[str, ...] = ("zigzag", "rings", "crosses", "sand")
#: Image side, pixels, of this world (the tiny CLIP's input size).
IMAGE_SIZE = 128

_NUM_THINGS = len(THING_CLASSES)
#: Probability that a thing wears its class's signature hue (hue of class c = c / 12 of the wheel,
#: +-15 degrees); otherwise its two colours are random. Colour is a cue, never the whole answer.
SIGNATURE_COLOR_PROB = 0.6
_THING_ALONE_RADIUS = (40.0, 56.0)  # radius range at 128 px of a lone thing: about 30-60 % of the image
_THING_GROUP_RADIUS = (20.0, 38.0)  # ... of each thing in a group of 2 or 3


@dataclass(frozen=True)
class Thing:
    """One patterned blob (pixel units are for the spec's image size)."""

    label: int  # thing class index in [0, 12)
    center: tuple[float, float]  # (y, x) pixels
    radius: float  # mean radius, pixels
    harmonics: tuple[tuple[float, float], ...]  # (amplitude, phase) of radius harmonics 2, 3, 4
    angle: float  # pattern rotation, radians
    period: float  # pattern period, pixels
    colors: tuple[tuple[int, int, int], tuple[int, int, int]]  # pattern foreground, background RGB
    offset: tuple[float, float]  # pattern phase (u, v), pixels


@dataclass(frozen=True)
class SceneSpec:
    """Everything needed to draw one image; sampled by :func:`sample_spec`."""

    size: int  # square image side, pixels
    stuff: tuple[int, ...]  # one or two stuff class indices (top region first)
    horizon: tuple[float, float, float, float]  # (height fraction, amplitude px, frequency, phase)
    stuff_seed: int  # seed of the stuff textures
    things: tuple[Thing, ...]  # drawn in order: later things occlude earlier ones
    noise: float  # std of per-pixel Gaussian noise added to the image (0..255 scale)


# ----------------------------------------------------------------------------- sampling


def _contrasting_colors(
    rng: np.random.Generator, label: int
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Two RGB colours whose luminance differs enough for the pattern to show.

    With probability :data:`SIGNATURE_COLOR_PROB` the first is the class's signature hue.
    """
    luma = np.array([0.299, 0.587, 0.114])
    signature = rng.random() < SIGNATURE_COLOR_PROB
    while True:
        a, b = rng.integers(0, 256, size=(2, 3))
        if signature:
            hue = label / _NUM_THINGS + rng.normal(0, 15 / 360)
            a = hsv_to_rgb(hue % 1.0, rng.uniform(0.6, 1.0), rng.uniform(0.55, 1.0))
        if abs(float(a @ luma - b @ luma)) > 60:
            return tuple(int(v) for v in a), tuple(int(v) for v in b)  # type: ignore[return-value]


def _sample_thing(rng: np.random.Generator, label: int, size: int, radius: float) -> Thing:
    margin = 0.15 * size
    center = (float(rng.uniform(margin, size - margin)), float(rng.uniform(margin, size - margin)))
    harmonics = tuple((float(rng.uniform(0.0, 0.12)), float(rng.uniform(0, 2 * np.pi))) for _ in range(3))
    return Thing(
        label=label,
        center=center,
        radius=radius,
        harmonics=harmonics,
        angle=float(rng.uniform(0, np.pi)),
        period=float(rng.uniform(*PERIOD_RANGE)) * size / 128,
        colors=_contrasting_colors(rng, label),
        offset=(float(rng.uniform(0, 64)), float(rng.uniform(0, 64))),
    )


def sample_spec(rng: np.random.Generator, size: int = 128) -> SceneSpec:
    """Sample a random scene: 1 large thing (40 %) or 2-3 smaller ones, over 1 or 2 stuff kinds.

    Args:
        rng: the source of randomness (see :func:`scene_rng`).
        size: square image side in pixels.

    Returns:
        The scene's spec, ready for :func:`render`.
    """
    num_stuff = 1 if rng.random() < 0.5 else 2
    stuff = tuple(int(s) + _NUM_THINGS for s in rng.choice(len(STUFF_CLASSES), size=num_stuff, replace=False))
    horizon = (
        float(rng.uniform(0.3, 0.6)),
        float(rng.uniform(0, 0.08 * size)),
        float(rng.uniform(1, 3)),
        float(rng.uniform(0, 2 * np.pi)),
    )
    roll = rng.random()
    num_things = 1 if roll < 0.4 else (2 if roll < 0.75 else 3)
    labels = rng.choice(_NUM_THINGS, size=num_things, replace=False)
    scale = size / 128
    if num_things == 1:
        radii = [rng.uniform(*_THING_ALONE_RADIUS) * scale]
    else:
        radii = sorted((rng.uniform(*_THING_GROUP_RADIUS) * scale for _ in labels), reverse=True)
    things = tuple(_sample_thing(rng, int(c), size, float(r)) for c, r in zip(labels, radii))
    if num_things == 1:  # a lone thing stays near the middle so that it keeps most of its area
        c = things[0]
        things = (dataclasses.replace(c, center=(size / 2 + (c.center[0] - size / 2) * 0.3,
                                                 size / 2 + (c.center[1] - size / 2) * 0.3)),)
    return SceneSpec(
        size=size,
        stuff=stuff,
        horizon=horizon,
        stuff_seed=int(rng.integers(0, 2**31)),
        things=things,
        noise=float(rng.uniform(0, 8)),
    )


def twin_spec(spec: SceneSpec, rng: np.random.Generator, swap: str = "thing") -> SceneSpec:
    """The same scene with one class changed (a hard negative).

    Args:
        spec: the scene.
        rng: the source of randomness.
        swap: "thing": one thing's class becomes a thing class not in the scene; "stuff": the
            background kinds become others (same layout and textures' seed), so that only the stuff
            words tell the two apart.
    """
    if swap == "stuff":
        return dataclasses.replace(spec, stuff=other_stuff(spec.stuff, rng, _NUM_THINGS))
    if swap != "thing":
        raise ValueError(f"swap must be 'thing' or 'stuff', not {swap!r}")
    present = {t.label for t in spec.things}
    which = int(rng.integers(0, len(spec.things)))
    choices = [c for c in range(_NUM_THINGS) if c not in present]
    new_label = int(rng.choice(choices))
    things = list(spec.things)
    things[which] = dataclasses.replace(things[which], label=new_label)
    return dataclasses.replace(spec, things=tuple(things))


# ----------------------------------------------------------------------------- drawing


def _blob_mask(thing: Thing, yy: np.ndarray, xx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boolean mask of a thing's blob, with each pixel's polar (r, theta) around its centre."""
    dy, dx = yy - thing.center[0], xx - thing.center[1]
    r = np.hypot(dy, dx)
    theta = np.arctan2(dy, dx)
    edge = np.ones_like(theta)
    for k, (amplitude, phase) in enumerate(thing.harmonics, start=2):
        edge = edge + amplitude * np.cos(k * theta + phase)
    return r < thing.radius * edge, r, theta


def render(spec: SceneSpec) -> tuple[np.ndarray, np.ndarray]:
    """Draw a scene.

    Args:
        spec: the scene (see :func:`sample_spec`).

    Returns:
        image: (H, W, 3) uint8 RGB in [0, 255].
        label: (H, W) uint8 class indices into :data:`CLASS_NAMES` (every pixel labelled).
    """
    size = spec.size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)  # (H, W) each
    rng = np.random.default_rng(spec.stuff_seed)
    image = np.empty((size, size, 3), dtype=np.float32)
    label = np.empty((size, size), dtype=np.uint8)
    if len(spec.stuff) == 1:
        top = np.ones((size, size), dtype=bool)
    else:
        frac, amplitude, freq, phase = spec.horizon
        boundary = frac * size + amplitude * np.sin(2 * np.pi * freq * xx / size + phase)
        top = yy < boundary
    regions = [top, ~top][: len(spec.stuff)]
    for stuff, region in zip(spec.stuff, regions):
        texture = stuff_texture(CLASS_NAMES[stuff], rng, yy, xx)
        np.copyto(image, texture, where=region[..., None])
        label[region] = stuff
    for thing in spec.things:
        # work inside the blob's bounding box only: (y0:y1, x0:x1)
        reach = thing.radius * (1 + sum(a for a, _ in thing.harmonics)) + 1
        y0, y1 = max(0, int(thing.center[0] - reach)), min(size, int(thing.center[0] + reach) + 1)
        x0, x1 = max(0, int(thing.center[1] - reach)), min(size, int(thing.center[1] + reach) + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        by, bx = yy[y0:y1, x0:x1], xx[y0:y1, x0:x1]
        inside, r, theta = _blob_mask(thing, by, bx)
        cos, sin = np.float32(np.cos(thing.angle)), np.float32(np.sin(thing.angle))
        u = cos * bx + sin * by + np.float32(thing.offset[0])  # rotated pattern coordinates, pixels
        v = -sin * bx + cos * by + np.float32(thing.offset[1])
        foreground = pattern_mask(THING_CLASSES[thing.label], u, v, thing.period, r, theta)
        fg_color, bg_color = (np.array(c, dtype=np.float32) for c in thing.colors)
        fill = bg_color + foreground[..., None].astype(np.float32) * (fg_color - bg_color)  # (h, w, 3)
        np.copyto(image[y0:y1, x0:x1], fill, where=inside[..., None])
        label[y0:y1, x0:x1][inside] = thing.label
    if spec.noise > 0:
        image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(spec.noise)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), label


# ----------------------------------------------------------------------------- captions


def caption(
    label: np.ndarray, rng: np.random.Generator, min_fraction: float = 0.015, stuff_probability: float = 0.5,
    stuff_only: bool = False,
) -> str:
    """A varied sentence naming the things (always) and the stuff (sometimes) in a label map.

    Args:
        label: (H, W) uint8 class indices.
        rng: the source of randomness (template and word order).
        min_fraction: things covering less of the image than this are not named.
        stuff_probability: how often the stuff is named too.
        stuff_only: name the stuff alone (pretraining's stuff phase), e.g. ``"a photo of grass and sky."``.

    Returns:
        The caption, e.g. ``"a photo of stripes and dots on grass."``.
    """
    return describe(label, rng, THING_CLASSES, STUFF_CLASSES, min_fraction, stuff_probability, stuff_only)


def generate_scene(rng: np.random.Generator, size: int = IMAGE_SIZE) -> Scene:
    """Sample, draw and caption one scene.

    Args:
        rng: the source of randomness (see :func:`scene_rng`).
        size: square image side in pixels.

    Returns:
        The drawn :class:`Scene`.
    """
    spec = sample_spec(rng, size=size)
    image, label = render(spec)
    return Scene(image=image, label=label, caption=caption(label, rng), spec=spec)
