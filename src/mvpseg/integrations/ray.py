"""Segment a collection with Ray Data, on one machine or a cluster (``pip install "mvpseg[ray]"``).

:class:`SegmentBatch` is a callable class for ``Dataset.map_batches``: Ray builds it once per actor
(the model loads once), then calls it on batches of image paths or bytes; each row gets its label map,
its class shares and, with ``out``, the same three files ``mvpseg segment`` writes, under the same
names (:func:`image_rows` gives the rows of ``segment``'s arguments, with their output names)::

    import ray
    from mvpseg.integrations.ray import SegmentBatch, image_rows

    rows = image_rows(["photos/"], recursive=True)            # [{"path": ..., "name": ...}, ...]
    ds = ray.data.from_items(rows).map_batches(
        SegmentBatch, batch_size=8,
        fn_constructor_kwargs={"classes": ["cat", "dog", "grass"], "prompts": "prompts.safetensors",
                               "out": "out/", "skip_existing": True, "with_labels": False},
        compute=ray.data.ActorPoolStrategy(size=4), num_gpus=1)  # CPU actors: num_cpus=1 instead
    ds.write_parquet("shares/")                                 # or .take_all(), .iter_rows() ...

Rows may hold the image's "bytes" instead of (or beside) its "path". With ``out``, every row needs its
"name": the output names must be unique over the whole dataset and equal to ``segment``'s for the same
paths, which only the whole list decides (:func:`image_rows`), never one batch: a batch without a "name"
column is refused in one line. Without ``out``, a row's name is its "name", else its path, else a
digest of its bytes. Nothing here imports Ray: the class runs without it (tests call it directly), and
this module is imported by nothing in mvpseg.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ModelSource, ViTMode

__all__ = ["SegmentBatch", "image_rows"]


def image_rows(arguments: Sequence[str], recursive: bool = False,
               listed: Sequence[str] = ()) -> list[dict[str, str]]:
    """The rows ``mvpseg segment ARGUMENTS`` would segment: {"path", "name"} with its fixed output names.

    Args:
        arguments: files, folders and patterns, as on the command line.
        recursive: take folders' subfolders too.
        listed: paths from input lists.
    """
    from ..inputs import collect_images

    return [{"path": str(item.path), "name": item.name}
            for item in collect_images(arguments, recursive=recursive, listed=listed).images]


class SegmentBatch:
    """Turns a batch of images into label maps and class shares (and optionally ``segment``'s files).

    Args:
        classes: the classes; a tuple gives a class's synonyms (display name first).
        background: a class for everything else (class 0), or None.
        background_threshold: pixels whose best class score is below it become ``background``.
        prompts: a prompt checkpoint (None: MaskCLIP's templates), or ``student`` a student checkpoint.
        clip: open_clip architecture (default the checkpoint's).
        pretrained: CLIP weights: a tag, a file, or "auto" (the checkpoint's).
        vit_mode: a ViT's dense mode (``--vit-mode``); default the prompts', else SC-CLIP's for the templates.
        source: the model as one :class:`mvpseg.ModelSource` (or its fields as a mapping), instead of
            ``prompts``, ``student``, ``clip``, ``pretrained`` and ``vit_mode``: the source ``mvpseg segment`` builds
            from its flags gives the same model here.
        device: "cuda", "cpu", ...; default CUDA when the actor has one.
        inference: InferenceConfig fields over the checkpoint's settings (``{"short_side": 512}``).
        out: write ``NAME.png``, ``NAME_overlay.png`` and ``NAME.json`` there, as ``mvpseg segment`` does.
        skip_existing: with ``out``, leave an image whose files are already whole (see ``--skip-existing``).
        with_labels: return each label map (set False for large collections whose maps are in ``out``).
        max_pixels: the largest image read, as ``--max-pixels``.
    """

    def __init__(self, classes: Sequence[str | Sequence[str]], background: str | Sequence[str] | None = None,
                 background_threshold: float | None = None, prompts: str | os.PathLike[str] | None = None,
                 student: str | os.PathLike[str] | None = None, clip: str | None = None,
                 pretrained: str | None = "auto", device: str | None = None,
                 inference: Mapping[str, Any] | None = None, out: str | os.PathLike[str] | None = None,
                 skip_existing: bool = False, with_labels: bool = True, max_pixels: int | None = None,
                 vit_mode: ViTMode | None = None, source: ModelSource | Mapping[str, Any] | None = None) -> None:
        from ..inference import Segmenter
        from ..vocabulary import Vocabulary

        self.classes = [name if isinstance(name, str) else tuple(name) for name in classes]
        self.background = background if background is None or isinstance(background, str) else tuple(background)
        self.background_threshold = background_threshold
        self.class_names = Vocabulary.of(self.classes, self.background, warn=False).display_names
        if source is None:
            source = ModelSource(clip=clip, pretrained=pretrained, prompts=None if prompts is None else str(prompts),
                                 student=None if student is None else str(student), vit_mode=vit_mode)
        else:
            if (prompts, student, clip, vit_mode, pretrained) != (None, None, None, None, "auto"):
                raise ValueError("give the model as source= or as prompts/student/clip/pretrained/vit_mode, not both")
            source = source if isinstance(source, ModelSource) else ModelSource(**source)
        if source.onnx is not None:
            raise ValueError("SegmentBatch runs PyTorch models: give the checkpoint, not its ONNX file")
        self.source = source
        self.segmenter = Segmenter.from_source(source, device=device, overrides=dict(inference or {}))
        from ..outputs import run_record

        self.made_with = run_record(self.segmenter, self.classes, self.background, background_threshold)
        self.out = None if out is None else Path(out)
        self.skip_existing, self.with_labels, self.max_pixels = skip_existing, with_labels, max_pixels

    def _read(self, row: Mapping[str, Any]) -> np.ndarray:
        from PIL import Image

        from ..image import ImageReadError, load_image

        data = row.get("bytes")
        if data is None:
            return load_image(str(row["path"]), max_pixels=self.max_pixels)
        try:
            with Image.open(io.BytesIO(bytes(data))) as picture:
                if self.max_pixels is not None and picture.width * picture.height > self.max_pixels:
                    raise ImageReadError(f"{row.get('path', 'image')}: {picture.width} x {picture.height} pixels, "
                                         f"more than max_pixels={self.max_pixels}")
                return load_image(picture)
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise ImageReadError(f"{row.get('path', 'image')}: not a readable image ({type(error).__name__})") from error

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """Segment a batch (Ray Data's "numpy" format: a column name -> array of rows).

        Args:
            batch: a "path" column (str), or a "bytes" column (with an optional "path"); a "name" column
                gives the output names (:func:`image_rows`'s; required with ``out``).

        Returns:
            The batch's columns with "name", "status" ("done", "skipped" or "failed: REASON"), "shares"
            ((B, C) float32 in the order of ``class_names``; NaN when not segmented) and, with
            ``with_labels``, "labels" ((H, W) int32 per row; (0, 0) when not segmented).
        """
        from ..image import ImageReadError
        from ..outputs import outputs_done, write_outputs

        columns = {key: list(values) for key, values in batch.items()}
        size = len(next(iter(columns.values())))
        if self.out is not None and size and "name" not in columns:
            raise ValueError("SegmentBatch(out=...) needs a 'name' column, so that output names are unique over the "
                             "whole dataset and equal to mvpseg segment's: build the rows with image_rows(paths)")
        rows = [{key: values[index] for key, values in columns.items()} for index in range(size)]
        names, statuses, labels = [], [], []
        shares = np.full((size, len(self.class_names)), np.nan, np.float32)  # (B, C)
        for index, row in enumerate(rows):
            name = str(row.get("name") or row.get("path") or _digest_name(row.get("bytes")))
            path = str(row.get("path") or name)
            names.append(name)
            if self.out is not None and self.skip_existing and outputs_done(self.out, name, path, self.class_names,
                                                                            self.made_with):
                statuses.append("skipped")
                labels.append(np.zeros((0, 0), np.int32))
                continue
            try:
                array = self._read(row)
            except ImageReadError as error:
                statuses.append(f"failed: {error}")
                labels.append(np.zeros((0, 0), np.int32))
                continue
            prediction = self.segmenter.predict(array, self.classes, background=self.background,
                                                background_threshold=self.background_threshold)
            if self.out is not None:
                write_outputs(self.out, name, path, array, prediction, self.made_with)
            shares[index] = list(prediction.class_shares().values())
            statuses.append("done")
            labels.append(prediction.labels.astype(np.int32))
        result: dict[str, Any] = {key: np.asarray(values) for key, values in columns.items() if key != "bytes"}
        result.update(name=np.asarray(names), status=np.asarray(statuses), shares=shares)
        if self.with_labels:
            result["labels"] = labels  # ragged: Ray stores them as variable-shaped tensors
        return result


def _digest_name(data: Any) -> str:
    """The name of a row without name or path: a digest of its bytes (the same image, the same name)."""
    return "bytes-" + hashlib.sha256(bytes(data or b"")).hexdigest()[:16]
