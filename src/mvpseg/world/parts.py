"""The parts world: things assembled from parts, where the K prompts have something to divide.

Each *thing* is an assembly of 2-3 parts in a fixed layout (a cap over a stem, a body on two legs, a
ring around a core, a tower of three, a head over a body on legs), with pose, size, aspect and colour
varied. Parts come from a shared inventory of 8 *part kinds*, each with its own texture (a pattern of
:mod:`mvpseg.world.drawing`), colour family and outline, so that every unseen thing is built from part
kinds that seen things also have (as a cow shares legs and a head with a horse): an unseen thing is a
new combination of known parts. Stuff backgrounds, noise and captions are the shared drawing's
(:mod:`mvpseg.world.drawing`), as in the patterns world.

Images are 256 px, so a stride-32 CLIP sees an 8x8 grid: a lone thing spans 5-7 cells, a thing in a
group 3-4, and each part one to three. Ground truth: class masks and, for measuring only (never for
training, never named in captions), part masks whose value is the part kind.

The module offers the same interface as :mod:`mvpseg.world.patterns` (:mod:`mvpseg.world.registry` lists it),
so the pretraining, evaluation and layout code serve both; ``HAS_PARTS`` is true here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from mvpseg.world import drawing as _drawing
from mvpseg.world.drawing import IGNORE_INDEX, STUFF_CLASSES, Scene, scene_rng

__all__ = [
    "HAS_PARTS",
    "PART_KINDS",
    "LAYOUTS",
    "THINGS",
    "THING_CLASSES",
    "STUFF_CLASSES",
    "CLASS_NAMES",
    "UNSEEN_CLASSES",
    "IGNORE_INDEX",
    "IMAGE_SIZE",
    "Assembly",
    "PartsSceneSpec",
    "sample_spec",
    "twin_spec",
    "render",
    "render_parts",
    "caption",
    "generate_scene",
    "scene_rng",
    "thing_parts",
]

#: This world's things have parts: ``PART_KINDS``, :func:`thing_parts`, part masks in ``Scene.parts``.
HAS_PARTS = True

IMAGE_SIZE = 256

#: Part kinds: (name, texture (a pattern of drawing.pattern_mask), superellipse exponent of its outline, edge wobble).
PART_KINDS: tuple[tuple[str, str, float, float], ...] = (
    ("dotted", "dots", 2.0, 0.00),
    ("striped", "stripes", 4.0, 0.00),
    ("checkered", "checkers", 6.0, 0.00),
    ("brick", "bricks", 5.0, 0.04),
    ("wavy", "waves", 2.0, 0.10),
    ("grid", "grid", 8.0, 0.00),
    ("diamond", "diamonds", 1.6, 0.00),
    ("honeycomb", "honeycomb", 2.5, 0.06),
)

#: Layouts: role -> (centre y, centre x, half-height, half-width) in units of the thing's size R, before
#: pose. Roles are drawn in the order given (later ones over earlier ones); "legs" roles are drawn twice
#: (mirrored in x), "ring" as an annulus around the core.
LAYOUTS: dict[str, tuple[tuple[str, tuple[float, float, float, float]], ...]] = {
    "stack": (("body", (0.30, 0.0, 0.55, 0.75)), ("top", (-0.50, 0.0, 0.40, 0.62))),
    "legs": (("legs", (0.55, 0.48, 0.42, 0.20)), ("body", (-0.20, 0.0, 0.48, 0.92))),
    "ring": (("ring", (0.0, 0.0, 1.0, 1.0)), ("core", (0.0, 0.0, 0.52, 0.52))),
    "tower": (("bottom", (0.68, 0.0, 0.34, 0.62)), ("middle", (0.0, 0.0, 0.36, 0.74)),
              ("top", (-0.68, 0.0, 0.34, 0.55))),
    "creature": (("legs", (0.62, 0.42, 0.36, 0.17)), ("body", (0.0, 0.0, 0.42, 0.82)),
                 ("head", (-0.62, 0.0, 0.32, 0.40))),
}

#: Things: name -> (layout, {role: part kind index}). Index order = class index. Every part kind of an
#: unseen thing belongs to seen things too; no seen thing has the same pair of kinds.
THINGS: tuple[tuple[str, str, dict[str, int]], ...] = (
    ("mushroom", "stack", {"top": 0, "body": 1}),
    ("lamp", "stack", {"top": 2, "body": 3}),
    ("table", "legs", {"body": 4, "legs": 5}),
    ("crab", "legs", {"body": 6, "legs": 2}),
    ("flower", "ring", {"core": 7, "ring": 0}),
    ("snail", "ring", {"core": 3, "ring": 4}),
    ("robot", "tower", {"top": 5, "middle": 6, "bottom": 1}),
    ("rocket", "tower", {"top": 0, "middle": 4, "bottom": 7}),
    ("dog", "creature", {"head": 1, "body": 5, "legs": 3}),
    ("owl", "stack", {"top": 6, "body": 3}),
    ("turtle", "legs", {"body": 7, "legs": 1}),
    ("cactus", "ring", {"core": 5, "ring": 2}),
)
THING_CLASSES: tuple[str, ...] = tuple(name for name, _, _ in THINGS)
CLASS_NAMES: tuple[str, ...] = THING_CLASSES + STUFF_CLASSES
#: The fixed zero-shot split: three things and one stuff never used when training prompts.
UNSEEN_CLASSES: tuple[str, ...] = ("owl", "turtle", "cactus", "sand")
_NUM_THINGS = len(THING_CLASSES)
_SIGNATURE_PROB = 0.7  # a part wears its kind's hue (kind k: k / 8 of the wheel, +-15 degrees) this often
_ALONE_SIZE = (78.0, 100.0)  # R of a lone thing at 256 px: it spans about 2R = 5-6 feature cells of 32 px
_GROUP_SIZE = (44.0, 62.0)  # R of each thing in a group of 2 or 3


def thing_parts(label: int) -> tuple[int, ...]:
    """The part kinds of thing class ``label``, in layout drawing order, each once."""
    _, layout, roles = THINGS[label]
    kinds: list[int] = []
    for role, _ in LAYOUTS[layout]:
        if roles[role] not in kinds:
            kinds.append(roles[role])
    return tuple(kinds)


@dataclass(frozen=True)
class Assembly:
    """One thing: its parts' layout under a pose (pixel units are for the spec's image size)."""

    label: int  # thing class index in [0, 12)
    center: tuple[float, float]  # (y, x) pixels
    size: float  # R, pixels
    angle: float  # pose rotation, radians (small: things stay upright)
    aspect: float  # height / width stretch of the whole layout
    pattern_angle: float  # texture rotation, radians
    period: float  # texture period, pixels
    colors: tuple[tuple[tuple[int, int, int], tuple[int, int, int]], ...]  # per part kind of thing_parts(label)
    offset: tuple[float, float]  # texture phase, pixels


@dataclass(frozen=True)
class PartsSceneSpec:
    """Everything needed to draw one parts-world image; sampled by :func:`sample_spec`."""

    size: int
    stuff: tuple[int, ...]  # one or two stuff class indices (top region first)
    horizon: tuple[float, float, float, float]  # (height fraction, amplitude px, frequency, phase)
    stuff_seed: int
    things: tuple[Assembly, ...]  # drawn in order: later things occlude earlier ones
    noise: float


def _kind_colors(rng: np.random.Generator, kind: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Two contrasting RGB colours of a part, the first in its kind's hue family most of the time."""
    luma = np.array([0.299, 0.587, 0.114])
    signature = rng.random() < _SIGNATURE_PROB
    while True:
        a, b = rng.integers(0, 256, size=(2, 3))
        if signature:
            hue = kind / len(PART_KINDS) + rng.normal(0, 15 / 360)
            a = _drawing.hsv_to_rgb(hue % 1.0, rng.uniform(0.6, 1.0), rng.uniform(0.55, 1.0))
        if abs(float(a @ luma - b @ luma)) > 60:
            return tuple(int(v) for v in a), tuple(int(v) for v in b)  # type: ignore[return-value]


def _sample_assembly(rng: np.random.Generator, label: int, center: tuple[float, float], size: float) -> Assembly:
    return Assembly(
        label=label,
        center=center,
        size=size,
        angle=float(rng.uniform(-0.35, 0.35)),
        aspect=float(rng.uniform(0.85, 1.15)),
        pattern_angle=float(rng.uniform(0, np.pi)),
        period=float(rng.uniform(*_drawing.PERIOD_RANGE)),
        colors=tuple(_kind_colors(rng, kind) for kind in thing_parts(label)),
        offset=(float(rng.uniform(0, 64)), float(rng.uniform(0, 64))),
    )


def sample_spec(rng: np.random.Generator, size: int = IMAGE_SIZE) -> PartsSceneSpec:
    """Sample a random scene: 1 large thing (40 %) or 2-3 smaller ones, over 1 or 2 stuff kinds."""
    num_stuff = 1 if rng.random() < 0.5 else 2
    stuff = tuple(int(s) + _NUM_THINGS for s in rng.choice(len(STUFF_CLASSES), size=num_stuff, replace=False))
    horizon = (float(rng.uniform(0.3, 0.6)), float(rng.uniform(0, 0.08 * size)), float(rng.uniform(1, 3)),
               float(rng.uniform(0, 2 * np.pi)))
    roll = rng.random()
    num_things = 1 if roll < 0.4 else (2 if roll < 0.75 else 3)
    labels = rng.choice(_NUM_THINGS, size=num_things, replace=False)
    scale = size / IMAGE_SIZE
    things: list[Assembly] = []
    for label in labels:
        if num_things == 1:
            r = float(rng.uniform(*_ALONE_SIZE)) * scale
            center = (size / 2 + rng.uniform(-0.08, 0.08) * size, size / 2 + rng.uniform(-0.08, 0.08) * size)
        else:
            r = float(rng.uniform(*_GROUP_SIZE)) * scale
            center = (0.0, 0.0)
            for _ in range(20):  # keep things apart: centres at least 1.4 R from each other
                center = (float(rng.uniform(r, size - r)), float(rng.uniform(r, size - r)))
                if all(np.hypot(center[0] - t.center[0], center[1] - t.center[1]) > 1.4 * max(r, t.size)
                       for t in things):
                    break
        things.append(_sample_assembly(rng, int(label), (float(center[0]), float(center[1])), r))
    return PartsSceneSpec(size=size, stuff=stuff, horizon=horizon, stuff_seed=int(rng.integers(0, 2**31)),
                          things=tuple(things), noise=float(rng.uniform(0, 8)))


def twin_spec(spec: PartsSceneSpec, rng: np.random.Generator, swap: str = "thing") -> PartsSceneSpec:
    """The same scene with one class changed (a hard negative).

    "thing": one thing becomes a thing class not in the scene (half the time one of the same layout, so
    that only its parts' kinds differ), at the same place, size and pose; "stuff": the background kinds
    change.
    """
    if swap == "stuff":
        return dataclasses.replace(spec, stuff=_drawing.other_stuff(spec.stuff, rng, _NUM_THINGS))
    if swap != "thing":
        raise ValueError(f"swap must be 'thing' or 'stuff', not {swap!r}")
    present = {t.label for t in spec.things}
    which = int(rng.integers(0, len(spec.things)))
    old = spec.things[which]
    choices = [c for c in range(_NUM_THINGS) if c not in present]
    same_layout = [c for c in choices if THINGS[c][1] == THINGS[old.label][1]]
    pool = same_layout if same_layout and rng.random() < 0.5 else choices
    new_label = int(rng.choice(pool))
    colors = tuple(_kind_colors(rng, kind) for kind in thing_parts(new_label))
    things = list(spec.things)
    things[which] = dataclasses.replace(old, label=new_label, colors=colors)
    return dataclasses.replace(spec, things=tuple(things))


def _part_regions(thing: Assembly, yy: np.ndarray, xx: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(part kind, boolean mask) of each drawn piece of a thing, in drawing order, over the grid (yy, xx)."""
    _, layout, roles = THINGS[thing.label]
    cos, sin = np.cos(thing.angle), np.sin(thing.angle)
    dy, dx = yy - thing.center[0], xx - thing.center[1]
    # layout coordinates (units of R): rotate by -angle, undo the aspect stretch
    ly = (cos * dy - sin * dx) / (thing.size * thing.aspect)
    lx = (sin * dy + cos * dx) / thing.size
    pieces: list[tuple[int, np.ndarray]] = []
    for role, (cy, cx, hh, hw) in LAYOUTS[layout]:
        kind = roles[role]
        _, _, exponent, wobble = PART_KINDS[kind]
        for sign in ((-1.0, 1.0) if role == "legs" else (1.0,)):
            py, px = (ly - cy) / hh, (lx - sign * cx) / hw
            theta = np.arctan2(py, px)
            norm = np.abs(py) ** exponent + np.abs(px) ** exponent
            edge = 1.0 + wobble * np.sin(5 * theta + kind)
            mask = norm < edge**exponent
            if role == "ring":
                _, _, core_h, core_w = dict(LAYOUTS[layout])["core"]
                mask &= (np.abs(ly / core_h) ** exponent + np.abs(lx / core_w) ** exponent) >= 0.8
            pieces.append((kind, mask))
    return pieces


def render_parts(spec: PartsSceneSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw a scene.

    Returns:
        image: (H, W, 3) uint8 RGB; label: (H, W) uint8 class indices into :data:`CLASS_NAMES`; parts:
        (H, W) uint8 part kind (index into :data:`PART_KINDS`) of every thing pixel, 255 elsewhere.
    """
    size = spec.size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)  # (H, W) each
    rng = np.random.default_rng(spec.stuff_seed)
    image = np.empty((size, size, 3), dtype=np.float32)
    label = np.empty((size, size), dtype=np.uint8)
    parts = np.full((size, size), IGNORE_INDEX, dtype=np.uint8)
    if len(spec.stuff) == 1:
        top = np.ones((size, size), dtype=bool)
    else:
        frac, amplitude, freq, phase = spec.horizon
        top = yy < frac * size + amplitude * np.sin(2 * np.pi * freq * xx / size + phase)
    for stuff, region in zip(spec.stuff, [top, ~top][: len(spec.stuff)]):
        np.copyto(image, _drawing.stuff_texture(CLASS_NAMES[stuff], rng, yy, xx), where=region[..., None])
        label[region] = stuff
    for thing in spec.things:
        reach = 1.9 * thing.size * max(thing.aspect, 1.0) + 2  # layouts stay within 1.1 R of the centre
        y0, y1 = max(0, int(thing.center[0] - reach)), min(size, int(thing.center[0] + reach) + 1)
        x0, x1 = max(0, int(thing.center[1] - reach)), min(size, int(thing.center[1] + reach) + 1)
        by, bx = yy[y0:y1, x0:x1], xx[y0:y1, x0:x1]
        cos, sin = np.float32(np.cos(thing.pattern_angle)), np.float32(np.sin(thing.pattern_angle))
        u = cos * bx + sin * by + np.float32(thing.offset[0])  # rotated texture coordinates, pixels
        v = -sin * bx + cos * by + np.float32(thing.offset[1])
        r = np.hypot(by - thing.center[0], bx - thing.center[1])
        theta = np.arctan2(by - thing.center[0], bx - thing.center[1])
        kinds = thing_parts(thing.label)
        for kind, mask in _part_regions(thing, by, bx):
            foreground = _drawing.pattern_mask(PART_KINDS[kind][1], u, v, thing.period, r, theta)
            fg, bg = (np.array(c, dtype=np.float32) for c in thing.colors[kinds.index(kind)])
            fill = bg + foreground[..., None].astype(np.float32) * (fg - bg)  # (h, w, 3)
            np.copyto(image[y0:y1, x0:x1], fill, where=mask[..., None])
            label[y0:y1, x0:x1][mask] = thing.label
            parts[y0:y1, x0:x1][mask] = kind
    if spec.noise > 0:
        image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(spec.noise)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), label, parts


def render(spec: PartsSceneSpec) -> tuple[np.ndarray, np.ndarray]:
    """Draw a scene: (H, W, 3) uint8 image and (H, W) uint8 class labels (see :func:`render_parts`)."""
    image, label, _ = render_parts(spec)
    return image, label


def caption(label: np.ndarray, rng: np.random.Generator, min_fraction: float = 0.015,
            stuff_probability: float = 0.5, stuff_only: bool = False) -> str:
    """A sentence naming the things (always) and the stuff (sometimes), never the parts (see patterns.caption)."""
    return _drawing.describe(label, rng, THING_CLASSES, STUFF_CLASSES, min_fraction, stuff_probability, stuff_only)


def generate_scene(rng: np.random.Generator, size: int = IMAGE_SIZE) -> Scene:
    """Sample, draw and caption one scene; ``Scene.parts`` holds the part masks."""
    spec = sample_spec(rng, size=size)
    image, label, parts = render_parts(spec)
    return Scene(image=image, label=label, caption=caption(label, rng), spec=spec, parts=parts)
