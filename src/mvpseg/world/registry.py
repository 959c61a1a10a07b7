"""The worlds by name: each is a module offering the same scene functions and class lists.

- ``patterns`` (:mod:`mvpseg.world.patterns`): 128-px images of patterned blobs, the first world.
- ``parts`` (:mod:`mvpseg.world.parts`): 256-px images of things assembled from shared part kinds.

Both draw with :mod:`mvpseg.world.drawing` (seeds, stuff, pattern textures, captions, :class:`Scene`).

A world module's interface (:data:`INTERFACE`): ``CLASS_NAMES``, ``THING_CLASSES``, ``STUFF_CLASSES``,
``UNSEEN_CLASSES``, ``IMAGE_SIZE``, ``IGNORE_INDEX``, ``sample_spec``, ``twin_spec``, ``render``, ``caption``,
``generate_scene``, ``scene_rng`` and its abilities, declared rather than guessed from what it happens to hold:

- ``HAS_PARTS`` (bool): its things are made of parts. Where true the module also has ``PART_KINDS``
  ((name, texture, ...) per part kind), ``thing_parts(label)`` (a thing class's part kinds) and
  ``render_parts(spec)``, and its scenes carry part masks (``Scene.parts``); the layout then writes
  ``SegmentationPart/`` and the demo measures where the prompts look.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["INTERFACE", "PARTS_INTERFACE", "WORLDS", "get_world"]

#: World name -> module.
WORLDS: dict[str, str] = {"patterns": "mvpseg.world.patterns", "parts": "mvpseg.world.parts"}
#: The names every world module has (see the module's docstring).
INTERFACE: tuple[str, ...] = (
    "CLASS_NAMES", "THING_CLASSES", "STUFF_CLASSES", "UNSEEN_CLASSES", "IMAGE_SIZE", "IGNORE_INDEX",
    "sample_spec", "twin_spec", "render", "caption", "generate_scene", "scene_rng", "HAS_PARTS",
)
#: The names a world module with ``HAS_PARTS`` true has besides.
PARTS_INTERFACE: tuple[str, ...] = ("PART_KINDS", "thing_parts", "render_parts")


def get_world(name: str) -> ModuleType:
    """The module of world ``name``; a ValueError naming the worlds for an unknown name."""
    if name not in WORLDS:
        raise ValueError(f"unknown world {name!r}: choose one of {', '.join(WORLDS)}")
    return importlib.import_module(WORLDS[name])
