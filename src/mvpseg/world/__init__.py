"""The synthetic segmentation world and the tiny CLIP pretrained on it (the offline demo's pieces).

- :mod:`mvpseg.world.registry`: the worlds by name (:func:`get_world`) and a world module's interface.
- :mod:`mvpseg.world.patterns`: the patterns world (patterned blobs, 128 px), scenes, masks and captions from a seed.
- :mod:`mvpseg.world.parts`: the parts world (things assembled from part kinds, 256 px), with part masks.
- :mod:`mvpseg.world.drawing`: the drawing both worlds share (seeds, stuff, pattern textures, captions).
- :mod:`mvpseg.world.layout`: :func:`write_world`, the custom VOC layout on disk.
- :mod:`mvpseg.world.pretrain`: CLIP contrastive pretraining of ``mvpseg-tiny``.
- :mod:`mvpseg.world.evaluate`: :func:`evaluate_tiny_clip`, zero-shot, dense and linear-probe checks.
"""

from mvpseg.world.layout import write_world
from mvpseg.world.patterns import (
    CLASS_NAMES,
    STUFF_CLASSES,
    THING_CLASSES,
    UNSEEN_CLASSES,
    generate_scene,
    scene_rng,
)

__all__ = [
    "CLASS_NAMES",
    "STUFF_CLASSES",
    "THING_CLASSES",
    "UNSEEN_CLASSES",
    "generate_scene",
    "scene_rng",
    "write_world",
]
