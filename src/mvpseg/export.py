"""ONNX export of MVP-SEG (dense CLIP features, the K maps, fusion and GPR) and of MVP-SEG+ students.

An exported file computes what :meth:`mvpseg.Segmenter.predict_torch` runs on one batch of windows, at
a fixed crop size (S, S) and any batch size B:

- inputs: ``images`` (B, 3, S, S) float32, normalised with the CLIP's mean and std, and ``text``
  (P, C, D) the class embeddings (:meth:`mvpseg.Segmenter.text_embeddings`, any C) -- or, exported
  with ``classes``, no ``text``: the embeddings of those classes are baked in;
- outputs: ``prompt_maps`` (B, P, C, h, w) cosine maps, ``fused_logits`` (B, C, h, w), and with GPR
  ``presence_logits`` (B, C); h = w = S / stride. The final map of one crop is
  ``softmax_c(fused) * sigmoid(presence)``.

The file's metadata (key ``mvpseg``, JSON) holds what the rest needs: the kind, the checkpoint it came
from, the CLIP, mean and std, stride, crop size, baked class names and the head's temperatures.
Resizing, sliding windows, stitching and label upsampling stay in Python: :class:`OnnxSegmenter` is a
:class:`mvpseg.Segmenter` whose windows run in onnxruntime (each window's prompt maps; the head runs on
the stitched maps, as in PyTorch). Images smaller than the crop are padded up to it.

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
import torch.nn.functional as F
from torch import nn

from .config import InferenceConfig
from .files import atomic_write
from .inference import Segmenter
from .model import MVPHead, MVPSeg, cosine_maps
from .version import __version__

__all__ = ["ONNX_FORMAT", "OnnxSegmenter", "export_onnx", "read_onnx_metadata"]

ONNX_FORMAT, ONNX_VERSION = "mvpseg-onnx", 1


class ExportGraph(nn.Module):
    """One batch of crops -> prompt maps, fused logits (and presence logits): what the ONNX file computes.

    Args:
        model: an :class:`mvpseg.MVPSeg` or a student.
        text: (P, C, D) class embeddings to bake in, or None to take them as an input.
    """

    def __init__(self, model: nn.Module, text: torch.Tensor | None = None) -> None:
        super().__init__()
        self.model = model
        tower = model.inference_tower(fold=True, channels_last=False)  # None for a student
        self.tower = tower
        self.baked = text is not None
        if text is not None:
            self.register_buffer("text", text.detach().float().clone())

    def forward(self, images: torch.Tensor, text: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        text = self.text if self.baked else text
        maps = cosine_maps(self.model.features(images, tower=self.tower), text).float()  # (B, P, C, h, w)
        output = self.model.head(maps)
        presence = () if output.presence_logits is None else (output.presence_logits,)
        return (maps, output.fused_logits, *presence)


def _kind(model: nn.Module) -> str:
    if not isinstance(model, MVPSeg):
        return "student"
    return "prompts" if model.prompts is not None else "templates"


def export_onnx(model: nn.Module, out: str | os.PathLike[str], crop_size: int = 512,
                classes: Sequence[str] | None = None, text: torch.Tensor | None = None,
                source: str | None = None, dynamo: bool = True, opset: int = 18) -> Path:
    """Export MVP-SEG or a student to an ONNX file at a fixed crop size with a dynamic batch.

    Args:
        model: an :class:`mvpseg.MVPSeg` (prompts or templates) or a student, on the CPU.
        out: the ``.onnx`` file (written atomically).
        crop_size: S, the side of the square crops the file takes; a multiple of 32.
        classes: bake these classes' text embeddings in (names as :meth:`Segmenter.text_embeddings`
            takes them); None keeps ``text`` an input (open vocabulary).
        text: the (P, C, D) embeddings of ``classes`` when already computed.
        source: the checkpoint the model came from (a path or Hub id), recorded for loading text later.
        dynamo: torch's default exporter (torch.export); False: the TorchScript exporter (faster to run).
        opset: the ONNX opset.

    Returns:
        The path written.
    """
    if crop_size < 32 or crop_size % 32:
        raise ValueError(f"the crop size must be a positive multiple of 32, not {crop_size}")
    model = model.eval().cpu()
    names = None
    if classes is not None:
        names = list(classes)
        if text is None:
            with torch.no_grad():
                text = model.text_embeddings(names).float()  # (P, C, D)
    graph = ExportGraph(model, text if names is not None else None).eval()
    with torch.no_grad():
        sample_text = model.text_embeddings(["a", "b"]).float() if names is None else text  # (P, 2, D)
    images = torch.zeros(2, 3, crop_size, crop_size)
    with torch.no_grad():
        outputs = graph(images, None if names is not None else sample_text)
    output_names = ["prompt_maps", "fused_logits", "presence_logits"][: len(outputs)]
    inputs = (images,) if names is not None else (images, sample_text)
    input_names = ["images"] if names is not None else ["images", "text"]
    clip = model.clip
    metadata = {
        "format": ONNX_FORMAT, "format_version": ONNX_VERSION, "mvpseg_version": __version__, "kind": _kind(model),
        "source": source, "clip": {"name": clip.name, "pretrained": _source_name(clip.pretrained),
                                   "fingerprint": clip.fingerprint},
        "mean": list(map(float, clip.mean)), "std": list(map(float, clip.std)), "stride": int(model.stride),
        "crop_size": crop_size, "classes": names, "num_prompts": int(outputs[0].shape[1]),
        "embed_dim": int(sample_text.shape[-1]),
        "outputs": output_names, "head": _head_state(model.head),
    }

    def write(tmp: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporters' deprecation and tracer notes
            _export(graph, inputs, tmp, input_names, output_names, dynamo, opset)
        import onnx

        proto = onnx.load(tmp)
        entry = proto.metadata_props.add()
        entry.key, entry.value = "mvpseg", json.dumps(metadata)
        onnx.save(proto, tmp)

    return atomic_write(out, write)


def _export(graph: nn.Module, inputs: tuple[torch.Tensor, ...], path: str, input_names: list[str],
            output_names: list[str], dynamo: bool, opset: int) -> None:
    has_text = len(inputs) == 2
    if dynamo:
        batch, classes = torch.export.Dim("batch"), torch.export.Dim("classes")
        shapes: dict[str, Any] = {"images": {0: batch}, "text": {1: classes} if has_text else None}
        torch.onnx.export(graph, inputs, path, dynamo=True, dynamic_shapes=shapes, input_names=input_names,
                          output_names=output_names, opset_version=opset, verbose=False)
        return
    axes = {"images": {0: "batch"}, "prompt_maps": {0: "batch"}, "fused_logits": {0: "batch"},
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


def read_onnx_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The mvpseg metadata of an exported file, or one ValueError line for another file."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"ONNX model not found: {path}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # onnx raises DecodeError and others for a file that is not ONNX
        raise ValueError(f"{path} is not an ONNX model ({type(error).__name__})") from error
    raw = {entry.key: entry.value for entry in proto.metadata_props}.get("mvpseg")
    if raw is None:
        raise ValueError(f"{path} is an ONNX model without mvpseg metadata: export it with mvpseg export")
    metadata = json.loads(raw)
    if metadata.get("format") != ONNX_FORMAT or int(metadata.get("format_version", 0)) > ONNX_VERSION:
        raise ValueError(f"{path} has format {metadata.get('format')} v{metadata.get('format_version')}; this mvpseg "
                         f"reads {ONNX_FORMAT} up to v{ONNX_VERSION}: upgrade mvpseg")
    return metadata


class _OnnxModel(nn.Module):
    """What a Segmenter needs of its model when onnxruntime runs the windows: the head and the text side."""

    def __init__(self, metadata: dict[str, Any], text_model: nn.Module | None) -> None:
        super().__init__()
        state = metadata["head"]
        self.head = MVPHead(has_global=state["has_global"], use_gpr=state["use_gpr"], tau1=1.0,
                            gamma=state["gamma"], learnable=False)
        with torch.no_grad():
            for name in ("log_tau1", "log_tau2", "gpr_offset"):
                getattr(self.head, name).fill_(state[name])
        self.text_model = text_model
        self.classes = metadata["classes"]
        self.shape = (metadata["num_prompts"], metadata["embed_dim"])

    def text_embeddings(self, class_names: Sequence[str]) -> torch.Tensor:
        if self.classes is None:
            assert self.text_model is not None
            return self.text_model.text_embeddings(class_names)
        if list(class_names) != self.classes:
            raise ValueError(f"this ONNX model was exported for the classes {', '.join(self.classes)} (in this order, "
                             f"synonyms included): give those, or export it without --classes")
        return torch.zeros(self.shape[0], len(self.classes), 1)  # (P, C, 1): the file holds the embeddings


class OnnxSegmenter(Segmenter):
    """A :class:`mvpseg.Segmenter` whose windows run through onnxruntime (CPU).

    Resizing, windows, stitching, the head on the stitched maps, upsampling and thresholds are the
    Segmenter's own; ``config.mode`` becomes "slide" and ``config.crop_size`` the file's crop size.

    Args:
        path: a file from :func:`export_onnx`.
        text_model: the MVPSeg or student whose text embeddings feed an open-vocabulary file (None when
            the classes are baked in).
        config: inference options.
        threads: onnxruntime's intra-op threads (default: torch's thread count).
    """

    def __init__(self, path: str | os.PathLike[str], text_model: nn.Module | None = None,
                 config: InferenceConfig | None = None, threads: int | None = None) -> None:
        import onnxruntime

        self.metadata = read_onnx_metadata(path)
        if self.metadata["classes"] is None and text_model is None:
            raise ValueError(f"{path} takes class embeddings: give the checkpoint it was exported from")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.device = torch.device("cpu")
        self.crop = int(self.metadata["crop_size"])
        self.config = dataclasses.replace(config or InferenceConfig(), mode="slide", crop_size=self.crop)
        self.model = _OnnxModel(self.metadata, text_model)  # type: ignore[assignment]
        self.clip = getattr(text_model, "clip", None)  # type: ignore[assignment]
        self.stride = int(self.metadata["stride"])
        self.tower = None
        self._mean = torch.tensor(self.metadata["mean"]).view(1, 3, 1, 1)
        self._std = torch.tensor(self.metadata["std"]).view(1, 3, 1, 1)
        self._text_cache = {}

    @classmethod
    def load(cls, path: str | os.PathLike[str], prompts: str | os.PathLike[str] | None = None,
             student: str | os.PathLike[str] | None = None, clip: str | None = None,
             pretrained: str | os.PathLike[str] | None = "auto", config: InferenceConfig | None = None,
             threads: int | None = None) -> OnnxSegmenter:
        """An OnnxSegmenter with the text side it needs: none for baked classes, else the given checkpoint
        (file, folder or Hub id), else the one the file was exported from, on its CLIP."""
        from .build import from_pretrained

        metadata = read_onnx_metadata(path)
        if metadata["classes"] is not None:
            return cls(path, None, config=config, threads=threads)
        kind, recorded = metadata["kind"], metadata.get("source")
        if prompts is None and student is None and kind != "templates":
            if recorded is None:
                raise ValueError(f"{path} takes class embeddings: give --{kind} CKPT, the checkpoint it was exported from")
            prompts, student = (recorded, None) if kind == "prompts" else (None, recorded)
        name = clip or metadata["clip"]["name"]
        if pretrained == "auto" and kind == "templates":
            pretrained = metadata["clip"]["pretrained"]
        text_model = from_pretrained(name, pretrained, prompts, device="cpu", student=student)
        if _kind(text_model) != kind:
            raise ValueError(f"{path} was exported from {kind}, not {_kind(text_model)}: give the checkpoint it came from")
        return cls(path, text_model, config=config, threads=threads)

    def pad(self, images: torch.Tensor) -> torch.Tensor:
        """As :meth:`Segmenter.pad`, and at least to the file's crop size (zeros at the bottom and right)."""
        padded = super().pad(images)
        height, width = padded.shape[-2:]
        return F.pad(padded, (0, max(self.crop - width, 0), 0, max(self.crop - height, 0)))

    def window_maps(self, crops: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(B, P, C, h, w) prompt maps of crops (B, 3, S, S), computed by onnxruntime."""
        feeds = {"images": crops.detach().float().contiguous().numpy()}
        if self.metadata["classes"] is None:
            feeds["text"] = text.detach().float().contiguous().cpu().numpy()
        (maps,) = self.session.run(["prompt_maps"], feeds)
        return torch.from_numpy(maps)

    def features(self, crops: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("an ONNX model gives prompt maps, not features: use window_maps")
