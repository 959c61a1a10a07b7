"""Loading a frozen CLIP from open_clip: names, pretrained tags, local files, and the offline error.

Every part of mvpseg that needs CLIP goes through :func:`load_clip`. CLIP itself always comes from
open_clip; nothing here re-implements it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import socket
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import open_clip
import torch
from torch import nn

from .config import TINY_CLIP_NAME
from .files import read_state_dict
from .stems import attach_stem, stem_config

__all__ = ["ClipBundle", "ClipWeightsUnavailable", "load_clip", "weights_fingerprint", "default_weights", "CACHE_ENV",
           "SHIPPED_TAG", "TINY_CLIP_NAME"]

#: Environment variable naming a directory where open_clip caches (and looks for) downloaded weights.
CACHE_ENV = "MVPSEG_CLIP_CACHE"
_ASSETS = Path(__file__).parent / "world" / "assets"
_registered = False
#: The tag of the weights shipped inside the package for the project's tiny CLIPs ("mvpseg-tiny", ...).
SHIPPED_TAG = "mvpseg"


def _shipped_weights(name: str) -> Path | None:
    """The weights file shipped for a project CLIP name, or None for any other name."""
    return _ASSETS / f"{name}.safetensors" if name.startswith(TINY_CLIP_NAME) else None


def default_weights(name: str) -> str:
    """The weights a CLIP name loads when none are named ("auto"): the shipped ones ("mvpseg") for the
    project's tiny CLIPs, else OpenAI's ("openai")."""
    return SHIPPED_TAG if _shipped_weights(name) is not None else "openai"


class ClipWeightsUnavailable(RuntimeError):
    """CLIP weights could not be had: no network, or a missing or unreadable file."""


class _HasStateDict(Protocol):
    def state_dict(self) -> Mapping[str, Any]: ...


@torch.no_grad()
def weights_fingerprint(model: nn.Module | _HasStateDict) -> str:
    """A short digest of a model's weights: each tensor's name, shape, float64 sum and Euclidean norm.

    Tells apart two sets of weights of one architecture (a re-downloaded tag, an overwritten file,
    another checkpoint) without storing them; the same weights give the same digest on any device.
    Reading every weight once takes about 0.3 s for RN50 on a CPU.
    """
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        values = tensor.detach().cpu()
        if values.is_floating_point():
            total = values.sum(dtype=torch.float64).item()
            norm = torch.linalg.vector_norm(values, dtype=torch.float64).item()
        else:
            total, norm = float(values.sum()), 0.0
        digest.update(f"{name}{tuple(values.shape)}{total:.10e}{norm:.10e}".encode())
    return digest.hexdigest()[:16]


@dataclass
class ClipBundle:
    """A frozen open_clip model with what is needed to feed it.

    Attributes:
        model: the open_clip ``CLIP`` module, in eval mode, every parameter frozen.
        tokenizer: open_clip's tokenizer for this model (callable: list of str -> (N, L) int64).
        mean: per-channel RGB mean for input normalisation (images in [0, 1]).
        std: per-channel RGB standard deviation.
        image_size: the square input size the image tower was trained at.
        name: the open_clip architecture name.
        pretrained: the tag or file the weights came from, as given to :func:`load_clip` ("mvpseg" for
            the shipped tiny CLIP), or None for random weights.
    """

    model: open_clip.CLIP  # untyped (Any to the checker): its towers are attributes set at run time
    tokenizer: Callable[..., torch.Tensor]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int
    name: str
    pretrained: str | None

    @functools.cached_property
    def fingerprint(self) -> str:
        """:func:`weights_fingerprint` of the model, computed once."""
        return weights_fingerprint(self.model)

    def normalisation(self, device: str | torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The (1, 3, 1, 1) mean and std that images in [0, 1] are normalised with: ``(x - mean) / std``."""
        return normalisation(self.mean, self.std, device)


def normalisation(mean: Sequence[float], std: Sequence[float],
                  device: str | torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel RGB ``mean`` and ``std`` as (1, 3, 1, 1) float32 tensors on ``device``: the one form every
    path (training, transfer, inference, ONNX) normalises images with."""
    return (torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1),  # (3,) -> (1, 3, 1, 1)
            torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1))


def _register_project_configs() -> None:
    """Make the project's own model configs (the tiny CLIP) known to open_clip by name."""
    global _registered
    if not _registered and _ASSETS.is_dir():
        open_clip.add_model_config(_ASSETS)
        _registered = True


def _is_torchscript_archive(path: Path) -> bool:
    """OpenAI's released ``.pt`` files are TorchScript zip archives (they hold a ``code/`` folder)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name or name.startswith("code/") for name in archive.namelist())


def _openai_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Weights of an OpenAI TorchScript archive, as an open_clip ``CLIP`` state dict.

    TorchScript archives are read with ``torch.jit.load`` (no pickled Python objects are executed);
    OpenAI's key names already match open_clip's ``CLIP`` module.
    """
    scripted = torch.jit.load(str(path), map_location="cpu")
    state = {k: v.float() if v.is_floating_point() else v for k, v in scripted.state_dict().items()}
    for key in ("input_resolution", "context_length", "vocab_size"):
        state.pop(key, None)
    return state


def _local_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """An open_clip state dict from a local file (:func:`mvpseg.files.read_state_dict`), DataParallel's prefix off."""
    try:
        state = read_state_dict(path)
    except ValueError as error:  # a truncated or foreign file: one line naming it
        raise ClipWeightsUnavailable(f"{error}: it could not be read as CLIP weights; pass an open_clip "
                                     ".safetensors/.pt/.bin file") from error
    return {k.removeprefix("module."): v for k, v in state.items()}


def _offline_message(name: str, pretrained: str, cause: BaseException | str) -> str:
    cfg: dict[str, Any] = open_clip.get_pretrained_cfg(name, pretrained) or {}
    sources = []
    if cfg.get("hf_hub"):
        sources.append(f"the Hugging Face repository {cfg['hf_hub'].rstrip('/')} (open_clip_model.safetensors)")
    if cfg.get("url"):
        sources.append(cfg["url"])
    where = " or ".join(sources) if sources else "the open_clip release of this tag"
    return (
        f"CLIP weights for {name!r} with tag {pretrained!r} could not be loaded ({cause}). "
        f"This machine needs the weights file from {where}. Download it on a machine with network and "
        f"pass it with --clip-weights PATH (Python: load_clip({name!r}, pretrained=PATH)), or put open_clip's "
        f"cache folder on this machine and name it with the environment variable {CACHE_ENV}."
    )


@contextlib.contextmanager
def _logging_disabled(level: int) -> Iterator[None]:
    """``logging.disable`` up to ``level`` for a while, then the caller's own setting exactly as it was.

    ``logging.disable(logging.NOTSET)`` afterwards would erase a level the host program had set
    itself; a host level above ``level`` is kept throughout.
    """
    previous = logging.root.manager.disable
    logging.disable(max(level, previous))
    try:
        yield
    finally:
        logging.disable(previous)


@contextlib.contextmanager
def _quiet_download() -> Iterator[None]:
    """Silence open_clip's and huggingface_hub's retry logging; go offline at once without DNS.

    Without a network the hub client retries for about a minute before giving up; when the hub's
    host does not resolve we switch it to offline mode, where it still finds files in its cache.
    """
    hub_constants: Any  # the module, or None without huggingface_hub
    try:
        import huggingface_hub.constants as hub_constants
    except ImportError:  # pragma: no cover - open_clip depends on huggingface_hub
        hub_constants = None
    previous_offline = getattr(hub_constants, "HF_HUB_OFFLINE", None)
    try:
        socket.getaddrinfo("huggingface.co", 443)
    except OSError:
        if hub_constants is not None:
            hub_constants.HF_HUB_OFFLINE = True
    with _logging_disabled(logging.ERROR):
        try:
            yield
        finally:
            if hub_constants is not None:
                hub_constants.HF_HUB_OFFLINE = previous_offline


def _freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def _is_transformers_source(name: str, pretrained: str | os.PathLike[str] | None) -> bool:
    """Whether ``pretrained`` names a transformers CLIPModel (:mod:`mvpseg.hf_clip`): a folder, a Hub id, or a
    folder's own weights file. A bare word that is a tag ("openai", "mvpseg", "auto") stays a tag."""
    if pretrained is None:
        return False
    text = os.fspath(pretrained)
    if text in (SHIPPED_TAG, "auto") or text in open_clip.list_pretrained_tags_by_model(name):
        return False
    from .hf_clip import is_transformers_source

    return is_transformers_source(text)


def _transformers_bundle(name: str, pretrained: str | os.PathLike[str], device: str | torch.device) -> ClipBundle:
    """A transformers CLIPModel checkpoint as a ClipBundle: its config.json decides the architecture; ``name``
    is kept as the bundle's name when its sizes are the checkpoint's (:func:`mvpseg.hf_clip.architecture_name`)."""
    from .hf_clip import TransformersClipError, load_transformers_clip

    local = Path(os.fspath(pretrained)).expanduser().exists()
    with contextlib.nullcontext() if local else _quiet_download():  # a Hub id: no minute of retries offline
        try:
            loaded = load_transformers_clip(pretrained, preferred_name=name, device=device)
        except TransformersClipError as error:
            raise ClipWeightsUnavailable(str(error)) from error
    return ClipBundle(
        model=_freeze(loaded.model),
        tokenizer=open_clip.SimpleTokenizer(context_length=loaded.context_length),  # CLIP's BPE, as transformers'
        mean=loaded.mean,
        std=loaded.std,
        image_size=loaded.image_size,
        name=loaded.name,
        pretrained=loaded.source,
    )


def load_clip(
    name: str,
    pretrained: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike[str] | None = None,
) -> ClipBundle:
    """Load a frozen open_clip CLIP model.

    Args:
        name: an open_clip architecture name ("RN50", "ViT-B-16", ...) or "mvpseg-tiny".
        pretrained: an open_clip tag ("openai", "laion2b_s34b_b88k"), a local checkpoint file (OpenAI's
            TorchScript ``.pt`` archive, an open_clip ``.pt``/``.bin``/``.safetensors`` state dict), or
            None for random weights. For the project's tiny CLIPs ("mvpseg-tiny", "mvpseg-tiny-parts-hvit", ...)
            the tag "mvpseg" selects the weights shipped inside the package. "auto": :func:`default_weights`.
            Or a Hugging Face transformers CLIPModel checkpoint: a folder with config.json and
            model.safetensors, or a Hub id (``org/name[@revision]``, e.g. "openai/clip-vit-base-patch16");
            its config.json decides the architecture (:mod:`mvpseg.hf_clip`), and the bundle's name is
            ``name`` when that has its sizes, else the open_clip name that has them.
        device: where to put the model.
        cache_dir: open_clip's download cache; defaults to ``$MVPSEG_CLIP_CACHE`` when set.

    Returns:
        A :class:`ClipBundle` with the frozen model in eval mode.

    Raises:
        ClipWeightsUnavailable: the weights could not be downloaded or read; the message says which
            file is needed and how to pass it.
        ValueError: an unknown architecture name, or a tag that is neither known nor a file.
    """
    _register_project_configs()
    if _is_transformers_source(name, pretrained):
        return _transformers_bundle(name, pretrained, device)  # type: ignore[arg-type]
    if name not in open_clip.list_models():
        raise ValueError(
            f"unknown CLIP architecture {name!r}: use an open_clip name such as 'RN50' or 'ViT-B-16' "
            f"(open_clip.list_models() lists them) or {TINY_CLIP_NAME!r}"
        )
    cache_dir = cache_dir or os.environ.get(CACHE_ENV) or None
    if pretrained == "auto":
        pretrained = default_weights(name)
    pretrained_str = source = None if pretrained is None else str(pretrained)
    shipped = _shipped_weights(name)
    if shipped is not None and pretrained_str == SHIPPED_TAG:
        pretrained_str = str(shipped)
        if not Path(pretrained_str).is_file():
            raise ClipWeightsUnavailable(
                f"the shipped weights of {name!r} are missing from this installation "
                f"({pretrained_str}): reinstall mvpseg, or pretrain them with `python -m mvpseg.world.pretrain`"
            )

    kwargs: dict[str, Any] = {"device": device, "cache_dir": cache_dir}
    state_dict: dict[str, torch.Tensor] | None = None
    if pretrained_str is None:
        with _logging_disabled(logging.WARNING):  # open_clip warns that no weights were loaded: asked for
            model = open_clip.create_model(name, pretrained=None, **kwargs)
        model = attach_stem(model, name).to(device)
    elif Path(pretrained_str).expanduser().exists() or os.sep in pretrained_str or pretrained_str.endswith(
        (".pt", ".pth", ".bin", ".safetensors")
    ):
        path = Path(pretrained_str).expanduser()
        if not path.is_file():
            raise ClipWeightsUnavailable(
                f"CLIP weights file not found: {path}. Pass an existing OpenAI .pt or open_clip "
                f".pt/.bin/.safetensors file with --clip-weights PATH."
            )
        if stem_config(name) is not None:
            # open_clip cannot build a convolutional stem: build the tower, attach it, then load (strictly, below)
            state_dict = _local_state_dict(path)
            with _logging_disabled(logging.WARNING):
                model = attach_stem(open_clip.create_model(name, pretrained=None, **kwargs), name)
        elif _is_torchscript_archive(path):
            # OpenAI's models were trained with QuickGELU.
            state_dict = _openai_state_dict(path)
            model = open_clip.create_model(name, pretrained=None, force_quick_gelu=True, **kwargs)
        else:
            try:
                model = open_clip.create_model(name, pretrained=str(path), **kwargs)
            except RuntimeError as error:  # open_clip raises RuntimeError for a state dict that does not fit
                raise ClipWeightsUnavailable(
                    f"{path} does not hold weights of the CLIP architecture {name!r} "
                    f"({str(error).splitlines()[0][:200]}); pass the --clip name this file was made for"
                ) from error
    else:
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained_str not in tags:
            tags = tags + [SHIPPED_TAG] * (shipped is not None)
            raise ValueError(
                f"{pretrained_str!r} is neither a known open_clip tag for {name!r} (known: "
                f"{', '.join(tags) or 'none'}) nor an existing file"
            )
        tag_cfg = open_clip.get_pretrained_cfg(name, pretrained_str)
        try:
            with _quiet_download():
                model = open_clip.create_model(
                    name, pretrained=pretrained_str, force_quick_gelu=bool(tag_cfg.get("quick_gelu")), **kwargs
                )
        except (RuntimeError, OSError) as error:
            raise ClipWeightsUnavailable(
                _offline_message(name, pretrained_str, "it could not be downloaded and is not in the cache")
            ) from error

    if state_dict is not None:
        try:
            model.load_state_dict(state_dict, strict=True)
        except RuntimeError as error:
            raise ClipWeightsUnavailable(
                f"{pretrained_str} does not hold weights of the CLIP architecture {name!r}; "
                f"pass the --clip name this file was made for"
            ) from error
        model.to(device)

    if not isinstance(model, open_clip.CLIP):
        raise ValueError(
            f"{name!r} is not a plain open_clip CLIP (custom text towers and CoCa are not supported)"
        )
    preprocess = open_clip.get_model_preprocess_cfg(model)
    image_size = preprocess.get("size", model.visual.image_size)
    if isinstance(image_size, (tuple, list)):
        image_size = image_size[0]
    return ClipBundle(
        model=_freeze(model),
        tokenizer=open_clip.get_tokenizer(name),
        mean=tuple(preprocess.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        std=tuple(preprocess.get("std", open_clip.OPENAI_DATASET_STD)),
        image_size=int(image_size),
        name=name,
        pretrained=source,
    )
