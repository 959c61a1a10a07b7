"""ONNX export of MVP-SEG (dense CLIP features, the K maps, fusion and GPR) and of MVP-SEG+ students.

An exported file computes what :meth:`mvpseg.Segmenter.predict_torch` runs on one batch of windows, for
any batch size B and any window size (H, W) in whole feature cells (multiples of the stride):

- inputs: ``images`` (B, 3, H, W) float32, normalised with the CLIP's mean and std, and ``text``
  (P, C, D) the class embeddings (:meth:`mvpseg.Segmenter.text_embeddings`, any C) -- or, exported
  with ``classes``, no ``text``: the embeddings of those classes are baked in;
- outputs: ``prompt_maps`` (B, P, C, h, w) cosine maps, ``fused_logits`` (B, C, h, w), and with GPR
  ``presence_logits`` (B, C); h = H / stride, w = W / stride. The final map of one crop is
  ``softmax_c(fused) * sigmoid(presence)``.

The file's metadata (key ``mvpseg``, JSON) holds what the rest needs: the kind, the checkpoint it came
from, the CLIP, mean and std, stride, the inference settings the model was made for (short or long
side, mode, crop and stride; the checkpoint's, laid under what the exporter was told), baked class
names, K and D, the head's temperatures and a fingerprint of the trained weights. Reading a file back and
running it: :mod:`mvpseg.onnx_segmenter` (:class:`OnnxSegmenter`, :func:`read_onnx_metadata`), whose names
this module holds too, so that ``from mvpseg.export import OnnxSegmenter`` is the one import users need.

A leaf (needs the ``export`` extra: onnx, onnxscript, onnxruntime); nothing in the core imports it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import INFERENCE_FIELDS, inference_settings
from .clip import weights_fingerprint
from .config import InferenceConfig, to_dict
from .files import atomic_write
from .inference import with_overrides
from .model import ClipModel, MVPHead, cosine_maps
from .onnx_segmenter import (
    ONNX_FORMAT,
    ONNX_VERSION,
    OnnxError,
    OnnxSegmenter,
    model_kind,
    read_onnx_metadata,
    require_onnx,
)
from .version import __version__

__all__ = ["ONNX_FORMAT", "OnnxError", "OnnxSegmenter", "export_onnx", "read_onnx_metadata", "require_onnx"]


class ExportGraph(nn.Module):
    """One batch of crops -> prompt maps, fused logits (and presence logits): what the ONNX file computes.

    Args:
        model: an :class:`mvpseg.MVPSeg` or a student.
        text: (P, C, D) class embeddings to bake in, or None to take them as an input.
    """

    text: torch.Tensor  # a buffer (register_buffer) when the classes are baked in

    def __init__(self, model: ClipModel, text: torch.Tensor | None = None) -> None:
        super().__init__()
        self.model = model
        tower = model.inference_tower(fold=True, channels_last=False)  # None for a student
        self.tower = tower
        self.baked = text is not None
        if text is not None:
            self.register_buffer("text", text.detach().float().clone())

    def forward(self, images: torch.Tensor, text: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        text = self.text if self.baked else text
        if text is None:
            raise ValueError("this graph takes the class embeddings as an input: give text")
        maps = cosine_maps(self.model.features(images, tower=self.tower), text).float()  # (B, P, C, h, w)
        output = self.model.head(maps)
        presence = () if output.presence_logits is None else (output.presence_logits,)
        return (maps, output.fused_logits, *presence)


def export_onnx(model: ClipModel, out: str | os.PathLike[str], crop_size: int | None = None,
                classes: Sequence[str] | None = None, text: torch.Tensor | None = None,
                source: str | None = None, dynamo: bool = True, opset: int = 18,
                inference: dict[str, Any] | None = None) -> Path:
    """Export MVP-SEG or a student to an ONNX file for any batch size and window size.

    Args:
        model: an :class:`mvpseg.MVPSeg` (prompts or templates) or a student, on the CPU.
        out: the ``.onnx`` file (written atomically).
        crop_size: the sliding-window side recorded as the file's default (and the side of the sample the
            exporter traces), rounded down to whole feature cells as inference rounds it
            (:meth:`mvpseg.InferenceConfig.window_on_cells`). Default: the model's recorded crop, else 512.
        classes: bake these classes' text embeddings in (names as :meth:`Segmenter.text_embeddings`
            takes them); None keeps ``text`` an input (open vocabulary).
        text: the (P, C, D) embeddings of ``classes`` when already computed.
        source: the checkpoint the model came from (a path or Hub id), recorded for loading text later.
        dynamo: torch's default exporter (torch.export); False: the TorchScript exporter (faster to run).
        opset: the ONNX opset.
        inference: InferenceConfig scale fields laid over the model's recorded settings
            (``model.inference_settings``); the result is recorded, and :class:`OnnxSegmenter` uses it.

    Returns:
        The path written.
    """
    require_onnx("mvpseg export")
    settings = dict(model.inference_settings)
    typed = dict(inference_settings(inference))
    if crop_size is not None:
        typed["crop_size"] = crop_size
    recorded = with_overrides(InferenceConfig(**settings), typed)  # checks them (a stride above the crop: one line)
    model = model.eval().cpu()
    stride = int(model.feature_stride)
    crop_size = recorded.window_on_cells(stride)[0]  # inference's rounding: whole feature cells
    recorded = dataclasses.replace(recorded, crop_size=crop_size)
    settings = {name: getattr(recorded, name) for name in INFERENCE_FIELDS}
    names = None
    if classes is not None:
        names = list(classes)
        if text is None:
            with torch.no_grad():
                text = model.text_embeddings(names).float()  # (P, C, D)
    graph = ExportGraph(model, text if names is not None else None).eval()
    with torch.no_grad():
        sample_text = model.text_embeddings(["a", "b"]).float() if names is None else text  # (P, 2, D)
    assert sample_text is not None
    # A sample whose sides differ (and are neither 0 nor 1 cell), so that the exporters keep both dynamic.
    images = torch.zeros(2, 3, crop_size, crop_size + stride)
    with torch.no_grad():
        outputs = graph(images, None if names is not None else sample_text)
    output_names = ["prompt_maps", "fused_logits", "presence_logits"][: len(outputs)]
    inputs = (images,) if names is not None else (images, sample_text)
    input_names = ["images"] if names is not None else ["images", "text"]
    clip = model.clip
    metadata = {
        "format": ONNX_FORMAT, "format_version": ONNX_VERSION, "mvpseg_version": __version__, "kind": model_kind(model),
        "source": source, "clip": {"name": clip.name, "pretrained": _source_name(clip.pretrained),
                                   "fingerprint": clip.fingerprint},
        "weights": weights_fingerprint(model), "config": to_dict(model.config),
        "mean": list(map(float, clip.mean)), "std": list(map(float, clip.std)), "feature_stride": stride,
        "crop_size": crop_size, "inference": settings, "dynamic_size": True,
        "classes": names, "num_prompts": int(outputs[0].shape[1]), "embed_dim": int(sample_text.shape[-1]),
        "outputs": output_names, "head": _head_state(model.head),
    }

    def write(tmp: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporters' deprecation and tracer notes
            _export(graph, inputs, tmp, input_names, output_names, dynamo, opset, stride)
        import onnx

        proto = onnx.load(tmp)
        entry = proto.metadata_props.add()
        entry.key, entry.value = "mvpseg", json.dumps(metadata)
        onnx.save(proto, tmp)

    return atomic_write(out, write)


def _export(graph: nn.Module, inputs: tuple[torch.Tensor, ...], path: str, input_names: list[str],
            output_names: list[str], dynamo: bool, opset: int, stride: int) -> None:
    has_text = len(inputs) == 2
    if dynamo:
        batch, classes = torch.export.Dim("batch"), torch.export.Dim("classes")
        rows, cols = torch.export.Dim("rows", min=1), torch.export.Dim("cols", min=1)  # feature cells
        # torch.export wants one entry per argument of forward, by name: no "text" when it is baked in.
        shapes: dict[str, Any] = {"images": {0: batch, 2: stride * rows, 3: stride * cols}}
        if has_text:
            shapes["text"] = {1: classes}
        torch.onnx.export(graph, inputs, path, dynamo=True, dynamic_shapes=shapes, input_names=input_names,
                          output_names=output_names, opset_version=opset, verbose=False)
        return
    axes: dict[str, dict[int, str]] = {"images": {0: "batch", 2: "height", 3: "width"},
                                       "prompt_maps": {0: "batch", 3: "rows", 4: "cols"},
                                       "fused_logits": {0: "batch", 2: "rows", 3: "cols"},
                                       "presence_logits": {0: "batch"}}
    if has_text:
        axes.update(text={1: "classes"})
        for name, axis in (("prompt_maps", 2), ("fused_logits", 1), ("presence_logits", 1)):
            axes[name][axis] = "classes"
    torch.onnx.export(graph, inputs, path, dynamo=False, input_names=input_names, output_names=output_names,
                      dynamic_axes={k: v for k, v in axes.items() if k in input_names + output_names},
                      opset_version=min(opset, 17))


def _source_name(pretrained: str | None) -> str | None:
    from .checkpoint import source_name

    return source_name(pretrained)


def _head_state(head: MVPHead) -> dict[str, Any]:
    return {"has_global": head.has_global, "use_gpr": head.use_gpr, "gamma": float(head.gamma),
            "log_tau1": float(head.log_tau1.detach()), "log_tau2": float(head.log_tau2.detach()),
            "gpr_offset": float(head.gpr_offset.detach())}
