"""The class-name files mvpseg ships: each benchmark's classes with synonyms, as the papers evaluating it give them.

The files live in ``mvpseg/data/class_names/`` and are class files as ``--classes-file`` reads them (one class
per line, its names separated by commas, ``#`` comments; see :mod:`mvpseg.vocabulary`):

- ``cls_*.txt``: SCLIP's ``configs/cls_*.txt`` (wangf3014/SCLIP), as SCLIP, NACLIP, SC-CLIP, ResCLIP and
  their successors use them; ``cls_voc21.txt`` and ``cls_coco_object.txt`` name the background by a line of
  stuff words.
- ``ade847.txt`` and ``pc459.txt``: CAT-Seg's ``datasets/ade847.json`` and ``pc459.json`` (cvlab-kaist/CAT-Seg),
  one entry per line (an entry's comma-separated names are its synonyms); ``ade847_ade_ids.txt`` holds the
  ADE20K_2021_17_01 object class behind each ADE20K-847 train id, as CAT-Seg's ``prepare_ade20k_full.py``
  maps them.

Give one to ``mvpseg segment --classes-file`` (:func:`peer_class_file` says where it is), or evaluate a
benchmark with its peers' names: ``mvpseg eval --peer-class-names`` or
``build_dataset(..., prompt_names_file=peer_class_file(name))``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["PEER_CLASS_FILES", "ade847_ade_ids", "class_names_path"]

_FOLDER = Path(__file__).with_name("class_names")

#: The class file of each built-in benchmark (canonical names, see :data:`mvpseg.data.classes.BUILTIN_DATASETS`).
PEER_CLASS_FILES: dict[str, str] = {
    "voc21": "cls_voc21.txt",
    "voc": "cls_voc20.txt",
    "context60": "cls_context60.txt",
    "context": "cls_context59.txt",
    "coco-object": "cls_coco_object.txt",
    "coco-stuff": "cls_coco_stuff.txt",
    "cityscapes": "cls_city_scapes.txt",
    "ade20k": "cls_ade20k.txt",
    "ade847": "ade847.txt",
    "pc459": "pc459.txt",
}


def class_names_path(file_name: str) -> Path:
    """The path of one of the shipped files, by its name (``"cls_voc21.txt"``).

    Raises:
        FileNotFoundError: no such file ships with mvpseg.
    """
    path = _FOLDER / file_name
    if not path.is_file():
        raise FileNotFoundError(f"mvpseg ships no class-name file {file_name!r} (in {_FOLDER})")
    return path


def ade847_ade_ids() -> tuple[int, ...]:
    """The ADE20K_2021_17_01 object class of each ADE20K-847 train id: entry k is train id k's class."""
    lines = class_names_path("ade847_ade_ids.txt").read_text(encoding="utf-8").splitlines()
    return tuple(int(line) for line in lines if line.strip() and not line.startswith("#"))
