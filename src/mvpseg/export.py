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
names, K and D, the head's temperatures and a fingerprint of the trained weights. Resizing, windows,
stitching and label upsampling stay in Python: :class:`OnnxSegmenter` is a :class:`mvpseg.Segmenter`
whose windows run in onnxruntime (each window's prompt maps; the head runs on the stitched maps, as in
PyTorch), with the file's settings by default, so that it gives the labels PyTorch gives.

A leaf (needs the ``export`` extra: onnx, onnxscript, onnxruntime); nothing in the core imports it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import INFERENCE_FIELDS, inference_settings
from .clip import ClipBundle, normalisation, weights_fingerprint
from .config import DenseOptions, InferenceConfig, ModelSource, to_dict
from .files import atomic_write
from .inference import Segmenter, with_overrides
from .model import ClipModel, MVPHead, MVPSeg, cosine_maps
from .version import __version__

__all__ = ["ONNX_FORMAT", "OnnxError", "OnnxSegmenter", "export_onnx", "read_onnx_metadata", "require_onnx"]

#: Format v2: any window size (whole feature cells) and the inference settings; v1 files took one crop size.
ONNX_FORMAT, ONNX_VERSION = "mvpseg-onnx", 2


class OnnxError(ValueError):
    """An ONNX file that cannot be used as asked, or onnxruntime's error, in one line."""


def require_onnx(what: str = "ONNX models") -> None:
    """Raise one :class:`OnnxError` line saying how to install the export extra when onnx or onnxruntime is missing."""
    for module in ("onnx", "onnxruntime"):
        try:
            __import__(module)
        except ImportError as error:
            raise OnnxError(f"{what} need {module}, which is not installed: pip install 'mvpseg[export]' "
                            f"(onnx, onnxscript, onnxruntime)") from error


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


def _kind(model: nn.Module) -> str:
    if not isinstance(model, MVPSeg):
        return "student"
    return "prompts" if model.prompts is not None else "templates"


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
        "format": ONNX_FORMAT, "format_version": ONNX_VERSION, "mvpseg_version": __version__, "kind": _kind(model),
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


def read_onnx_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The mvpseg metadata of an exported file, or one :class:`OnnxError` line for another file."""
    require_onnx()
    import onnx

    path = Path(path)
    if not path.is_file():
        raise OnnxError(f"ONNX model not found: {path}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # onnx raises DecodeError and others for a file that is not ONNX
        raise OnnxError(f"{path} is not an ONNX model ({type(error).__name__})") from error
    raw = {entry.key: entry.value for entry in proto.metadata_props}.get("mvpseg")
    if raw is None:
        raise OnnxError(f"{path} is an ONNX model without mvpseg metadata: export it with mvpseg export")
    metadata = json.loads(raw)
    if metadata.get("format") != ONNX_FORMAT or int(metadata.get("format_version", 0)) > ONNX_VERSION:
        raise OnnxError(f"{path} has format {metadata.get('format')} v{metadata.get('format_version')}; this mvpseg "
                        f"reads {ONNX_FORMAT} up to v{ONNX_VERSION}: upgrade mvpseg")
    return metadata


class _OnnxModel(nn.Module):
    """The model a Segmenter gets when onnxruntime runs the windows: what it uses of an :class:`mvpseg.MVPSeg`
    (stride, normalisation, head, text side, recorded settings, window maps), read from the file's metadata.

    Args:
        session: the onnxruntime session of the file.
        metadata: its :func:`read_onnx_metadata`.
        text_model: the MVPSeg or student whose text embeddings feed an open-vocabulary file (None: baked classes).
        path: the file, named in errors.
    """

    def __init__(self, session: Any, metadata: dict[str, Any], text_model: ClipModel | None, path: Path) -> None:
        super().__init__()
        state = metadata["head"]
        self.head = MVPHead(has_global=state["has_global"], use_gpr=state["use_gpr"], tau1=1.0,
                            gamma=state["gamma"], learnable=False)
        with torch.no_grad():
            for name in ("log_tau1", "log_tau2", "gpr_offset"):
                getattr(self.head, name).fill_(state[name])
        self.session, self.metadata, self.path = session, metadata, path
        self.text_model = text_model
        stride: Any = metadata.get("feature_stride", metadata.get("stride"))  # "stride" in older files
        self.feature_stride = int(stride)
        #: The settings the file was exported with (a Segmenter's defaults).
        self.inference_settings = inference_settings(metadata.get("inference"))

    @property
    def clip(self) -> ClipBundle | None:
        """The text model's CLIP (None for baked classes)."""
        return getattr(self.text_model, "clip", None)

    def normalisation(self, device: str | torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The (1, 3, 1, 1) mean and std the file's images are normalised with (recorded at export)."""
        return normalisation(self.metadata["mean"], self.metadata["std"], device)

    def inference_tower(self, fold: bool = True, channels_last: bool = True) -> None:
        """No torch tower: onnxruntime runs the windows."""
        return None

    def text_embeddings(self, class_names: Sequence[str]) -> torch.Tensor:
        assert self.text_model is not None, "a file with baked classes takes no text"
        return self.text_model.text_embeddings(class_names)

    def features(self, crops: torch.Tensor, tower: nn.Module | None = None,
                 options: DenseOptions | None = None) -> torch.Tensor:
        raise NotImplementedError("an ONNX model gives prompt maps, not features: use window_maps")

    def window_maps(self, crops: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(B, P, C, h, w) prompt maps of normalised crops (B, 3, H, W), computed by onnxruntime."""
        feeds = {"images": crops.detach().float().contiguous().numpy()}
        if self.metadata["classes"] is None:
            feeds["text"] = text.detach().float().contiguous().cpu().numpy()
        try:
            (maps,) = self.session.run(["prompt_maps"], feeds)
        except Exception as error:  # onnxruntime's RuntimeException, InvalidArgument, ...: one line
            raise OnnxError(f"onnxruntime failed on {self.path} for windows of {tuple(crops.shape)}: "
                            f"{_first_line(error)}") from error
        return torch.from_numpy(maps)


def _check_pair(path: str | os.PathLike[str], metadata: dict[str, Any], text_model: ClipModel, source: str) -> None:
    """Refuse, in one line naming both, a text model that is not the one the open-vocabulary file was exported from."""
    with torch.no_grad():
        probe = text_model.text_embeddings(["object"])  # (P, 1, D)
    clip = getattr(text_model, "clip", None)
    ours = {"kind": _kind(text_model), "CLIP fingerprint": getattr(clip, "fingerprint", None),
            "prompts P": int(probe.shape[0]), "embedding size D": int(probe.shape[-1])}
    theirs = {"kind": metadata["kind"], "CLIP fingerprint": metadata["clip"].get("fingerprint"),
              "prompts P": int(metadata["num_prompts"]), "embedding size D": int(metadata["embed_dim"])}
    if metadata.get("weights") is not None:  # the trained tensors (prompts, temperatures, a student's network)
        ours["trained weights"], theirs["trained weights"] = weights_fingerprint(text_model), metadata["weights"]
    for what, expected in theirs.items():
        if expected is not None and ours[what] != expected:
            raise OnnxError(f"{path} and {source} do not belong together ({what}: {expected} in the ONNX file, "
                            f"{ours[what]} in {source}): give the checkpoint the file was exported from "
                            f"({metadata.get('source') or 'recorded in neither'})")


class OnnxSegmenter(Segmenter):
    """A :class:`mvpseg.Segmenter` whose windows run through onnxruntime (CPU).

    Resizing, windows, stitching, the head on the stitched maps, upsampling and thresholds are the
    Segmenter's own, with the settings the file records by default (those of the checkpoint it was
    exported from), so that it gives the labels PyTorch gives; ``config`` replaces them. Files of format
    v1 take one crop size: ``config.mode`` becomes "slide" and ``config.crop_size`` theirs.

    Args:
        path: a file from :func:`export_onnx`.
        text_model: the MVPSeg or student whose text embeddings feed an open-vocabulary file (None when
            the classes are baked in); it must be the one the file was exported from (checked).
        config: inference options (default: the file's settings over InferenceConfig's defaults).
        threads: onnxruntime's intra-op threads (default: torch's thread count).
        overrides: InferenceConfig fields laid over ``config`` (what a user typed).
        text_source: how to name ``text_model`` in errors (its checkpoint).
    """

    # _OnnxModel is no ClipModel: it stands in for one (the parts Segmenter uses of it, window maps for features).
    model: _OnnxModel  # type: ignore[assignment]

    def __init__(self, path: str | os.PathLike[str], text_model: ClipModel | None = None,
                 config: InferenceConfig | None = None, threads: int | None = None,
                 overrides: dict[str, Any] | None = None, text_source: str | None = None) -> None:
        metadata = read_onnx_metadata(path)
        import onnxruntime

        if metadata["classes"] is None:
            if text_model is None:
                raise OnnxError(f"{path} takes class embeddings: give the checkpoint it was exported from")
            _check_pair(path, metadata, text_model, text_source or "the text model")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        try:
            session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime's Fail, InvalidGraph, ...: one line
            raise OnnxError(f"onnxruntime cannot load {path}: {_first_line(error)}") from error
        model = _OnnxModel(session, metadata, text_model, Path(path))
        self.crop = int(metadata["crop_size"])
        self.dynamic_size = bool(metadata.get("dynamic_size"))
        config = with_overrides(config or InferenceConfig(**model.inference_settings), overrides)
        if not self.dynamic_size:  # format v1: one crop size
            config = dataclasses.replace(config, mode="slide", crop_size=self.crop,
                                         stride=None if config.stride is None else min(config.stride, self.crop))
        super().__init__(model, config=config, device="cpu")  # type: ignore[arg-type]  # stands in for a ClipModel

    @property
    def session(self) -> Any:
        """The onnxruntime session that runs the windows."""
        return self.model.session

    @property
    def metadata(self) -> dict[str, Any]:
        """The file's :func:`read_onnx_metadata`."""
        return self.model.metadata

    @property
    def path(self) -> Path:
        """The ONNX file."""
        return self.model.path

    # An ONNX file runs on the CPU with onnxruntime's threads: no device parameter, unlike Segmenter.from_source.
    @classmethod
    def from_source(cls, source: ModelSource, config: InferenceConfig | None = None,  # type: ignore[override]
                    threads: int | None = None,
                    overrides: Mapping[str, Any] | None = None) -> OnnxSegmenter:
        """:meth:`load` of a model source naming an ONNX file (its prompts or student give the text side)."""
        if source.onnx is None:
            raise ValueError("this model source names no ONNX file: use mvpseg.Segmenter.from_source")
        return cls.load(source.onnx, prompts=source.prompts, student=source.student, clip=source.clip,
                        pretrained=source.pretrained, config=config, threads=threads,
                        overrides=None if overrides is None else dict(overrides))

    @classmethod
    def load(cls, path: str | os.PathLike[str], prompts: str | os.PathLike[str] | None = None,
             student: str | os.PathLike[str] | None = None, clip: str | None = None,
             pretrained: str | os.PathLike[str] | None = "auto", config: InferenceConfig | None = None,
             threads: int | None = None, overrides: dict[str, Any] | None = None) -> OnnxSegmenter:
        """An OnnxSegmenter with the text side it needs: none for baked classes, else the given checkpoint
        (file, folder or Hub id), else the one the file was exported from, on its CLIP."""
        from .build import from_pretrained

        metadata = read_onnx_metadata(path)
        if metadata["classes"] is not None:
            return cls(path, None, config=config, threads=threads, overrides=overrides)
        kind, recorded = metadata["kind"], metadata.get("source")
        if prompts is None and student is None and kind != "templates":
            if recorded is None:
                raise OnnxError(f"{path} takes class embeddings: give --{kind} CKPT, the checkpoint it was exported from")
            prompts, student = (recorded, None) if kind == "prompts" else (None, recorded)
        name = clip or metadata["clip"]["name"]
        if pretrained == "auto" and kind == "templates":
            pretrained = metadata["clip"]["pretrained"]
        text_model = from_pretrained(name, pretrained, prompts, device="cpu", student=student)
        source = str(student or prompts or f"the {name} templates")
        if _kind(text_model) != kind:
            raise OnnxError(f"{path} was exported from {kind}, not {_kind(text_model)} ({source}): give the "
                            f"checkpoint it came from")
        return cls(path, text_model, config=config, threads=threads, overrides=overrides, text_source=source)

    def identity(self) -> dict[str, Any]:
        """As :meth:`Segmenter.identity`, read from the file (runtime "onnxruntime"; baked classes too)."""
        identity = {"kind": self.metadata["kind"], "clip": self.metadata["clip"].get("fingerprint"),
                    "weights": self.metadata.get("weights"), "config": self.metadata.get("config"),
                    "runtime": "onnxruntime"}
        if self.metadata["classes"] is not None:
            identity["baked_classes"] = list(self.metadata["classes"])
        return identity

    def text_embeddings(self, class_names: Sequence[str]) -> torch.Tensor:
        """As :meth:`Segmenter.text_embeddings`; for baked classes, a (P, C, 1) placeholder once the names are
        checked, all at once, against the file's (their order and synonyms included)."""
        baked = self.metadata["classes"]
        if baked is None:
            return super().text_embeddings(class_names)
        names = list(class_names)
        if names != list(baked):
            raise OnnxError(f"this ONNX model was exported for the {len(baked)} classes {', '.join(baked)} (in this "
                            f"order, synonyms included): give those, or export it without --classes")
        return torch.zeros(int(self.metadata["num_prompts"]), len(names), 1)  # (P, C, 1): the file holds them

    def pad(self, images: torch.Tensor) -> torch.Tensor:
        """As :meth:`Segmenter.pad`; for a v1 file (one crop size) at least to its crop (zeros at the bottom and right)."""
        padded = super().pad(images)
        if self.dynamic_size:
            return padded
        height, width = padded.shape[-2:]
        return F.pad(padded, (0, max(self.crop - width, 0), 0, max(self.crop - height, 0)))

    def window_maps(self, crops: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(B, P, C, h, w) prompt maps of crops (B, 3, H, W), computed by onnxruntime."""
        return self.model.window_maps(crops, text)


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
