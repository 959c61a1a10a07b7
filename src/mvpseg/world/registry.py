"""The worlds by name: each is a module offering the same scene functions and class lists.

- ``patterns`` (:mod:`mvpseg.world.scene`): 128-px images of patterned blobs, the first world.
- ``parts`` (:mod:`mvpseg.world.parts`): 256-px images of things assembled from shared part kinds.

A world module has ``CLASS_NAMES``, ``THING_CLASSES``, ``STUFF_CLASSES``, ``UNSEEN_CLASSES``,
``IMAGE_SIZE``, ``sample_spec``, ``twin_spec``, ``render``, ``caption`` and ``generate_scene``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["WORLDS", "get_world"]

#: World name -> module.
WORLDS: dict[str, str] = {"patterns": "mvpseg.world.scene", "parts": "mvpseg.world.parts"}


def get_world(name: str) -> ModuleType:
    """The module of world ``name``; a ValueError naming the worlds for an unknown name."""
    if name not in WORLDS:
        raise ValueError(f"unknown world {name!r}: choose one of {', '.join(WORLDS)}")
    return importlib.import_module(WORLDS[name])
