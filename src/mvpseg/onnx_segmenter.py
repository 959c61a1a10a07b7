"""ONNX files of ``mvpseg export`` read back and run: :class:`OnnxSegmenter`, a :class:`mvpseg.Segmenter` whose
windows run in onnxruntime.

The file format (:data:`ONNX_FORMAT`) is described in :mod:`mvpseg.export`, which writes it. Resizing, windows,
stitching and label upsampling stay in Python: an :class:`OnnxSegmenter` runs each window's prompt maps in
onnxruntime and the head on the stitched maps, as in PyTorch, with the file's settings by default, so that it
gives the labels PyTorch gives. The file's model (stride, normalisation, head, text side, recorded settings)
is a :class:`mvpseg.model.SegmentationModel`, handed to ``Segmenter.__init__`` as every other model is.

A leaf (needs the ``export`` extra: onnx, onnxruntime); nothing in the core imports it. Its public names are
:mod:`mvpseg.export`'s too (``from mvpseg.export import OnnxSegmenter``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import inference_settings
from .clip import ClipBundle, normalisation, weights_fingerprint
from .config import DenseOptions, InferenceConfig, ModelSource
from .inference import Segmenter, with_overrides
from .model import ClipModel, MVPHead, MVPSeg, cosine_maps

if TYPE_CHECKING:
    import open_clip

__all__ = ["ONNX_FORMAT", "ONNX_VERSION", "OnnxError", "OnnxSegmenter", "model_kind", "read_onnx_metadata",
           "require_onnx"]

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


def model_kind(model: object) -> str:
    """What a model is, as files and identities record it: "prompts", "templates" (MVPSeg without prompts) or
    "student"."""
    if not isinstance(model, MVPSeg):
        return "student"
    return "prompts" if model.prompts is not None else "templates"


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
    """The model a Segmenter gets when onnxruntime runs the windows: a :class:`mvpseg.model.SegmentationModel`
    (stride, normalisation, head, text side, recorded settings), read from the file's metadata, whose
    :meth:`window_maps` stand in for ``cosine_maps(features(crops), text)`` (:class:`OnnxSegmenter` calls them).

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

    @property
    def clip_model(self) -> open_clip.CLIP:
        """The text model's open_clip ``CLIP``; an :class:`OnnxError` for baked classes."""
        if self.clip is None:
            raise OnnxError(f"{self.path} has its classes baked in: it holds no CLIP")
        return self.clip.model

    @property
    def config(self) -> dict[str, Any] | None:
        """The exported model's config, as the file records it (a dict)."""
        return self.metadata.get("config")

    cosine_maps = staticmethod(cosine_maps)

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
    ours = {"kind": model_kind(text_model), "CLIP fingerprint": getattr(clip, "fingerprint", None),
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

    model: _OnnxModel

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
        super().__init__(model, config=config, device="cpu")

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
        if model_kind(text_model) != kind:
            raise OnnxError(f"{path} was exported from {kind}, not {model_kind(text_model)} ({source}): give the "
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

    def _pad(self, images: torch.Tensor) -> torch.Tensor:
        """As the Segmenter's padding to whole cells; for a v1 file (one crop size) at least to its crop (zeros at the bottom and right)."""
        padded = super()._pad(images)
        if self.dynamic_size:
            return padded
        height, width = padded.shape[-2:]
        return F.pad(padded, (0, max(self.crop - width, 0), 0, max(self.crop - height, 0)))

    def _window_maps(self, crops: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(B, P, C, h, w) prompt maps of crops (B, 3, H, W), computed by onnxruntime."""
        return self.model.window_maps(crops, text)


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
