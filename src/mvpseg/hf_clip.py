"""Hugging Face ``transformers`` CLIP checkpoints (a ``CLIPModel`` folder or Hub id) as the open_clip CLIP mvpseg runs.

A transformers CLIP is a folder holding ``config.json`` (``model_type: "clip"``) and ``model.safetensors``
(or shards listed in ``model.safetensors.index.json``; ``pytorch_model.bin`` is read with
``torch.load(weights_only=True)``), the form of ``openai/clip-vit-base-patch16``, ``openai/clip-vit-large-patch14``
and LAION's ``laion/CLIP-ViT-*`` repositories. The architecture comes from ``config.json`` (patch size,
widths, depths, heads, MLP widths, image size, ``hidden_act`` quick_gelu or gelu, projection size, text
context and vocabulary; transformers' defaults for the fields a file leaves out); the weights are renamed
to open_clip's ``CLIP`` by a key map (the query, key and value projections concatenated into
``in_proj``, the two projections transposed). ``transformers`` itself is never imported.

The tokenizer is CLIP's BPE in either format: open_clip's ``SimpleTokenizer`` gives the same ids, and
both pool the text at the end-of-text token (the largest id).
"""

from __future__ import annotations

import json
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.model import CLIPTextCfg, CLIPVisionCfg
from torch import nn

__all__ = ["Architecture", "TransformersClip", "TransformersClipError", "architecture_of", "is_transformers_source", "load_transformers_clip",
           "open_clip_state_dict"]

CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
WEIGHTS_FILE, WEIGHTS_INDEX, PICKLE_WEIGHTS = "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"
#: The files of a Hub repository that are fetched (LAION's also hold open_clip's copy of the weights: not fetched).
HUB_FILES = [CONFIG_FILE, PREPROCESSOR_FILE, WEIGHTS_FILE, WEIGHTS_INDEX, "model-*-of-*.safetensors"]
#: CLIP's BPE vocabulary: the only one open_clip's tokenizer gives ids for.
BPE_VOCABULARY = 49408
#: transformers' defaults for the fields of ``CLIPTextConfig`` / ``CLIPVisionConfig`` a config.json may leave out.
TEXT_DEFAULTS: dict[str, Any] = {"vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048,
                                 "num_hidden_layers": 12, "num_attention_heads": 8, "max_position_embeddings": 77,
                                 "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
VISION_DEFAULTS: dict[str, Any] = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                                   "num_attention_heads": 12, "num_channels": 3, "image_size": 224, "patch_size": 32,
                                   "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
#: transformers' activation names -> open_clip's quick_gelu flag (open_clip's CLIP has these two).
ACTIVATIONS = {"quick_gelu": True, "gelu": False}

# transformers key -> open_clip key, for whole tensors; "(T)" marks a projection stored transposed.
_TENSOR_KEYS = {
    "logit_scale": "logit_scale",
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "text_projection.weight": "text_projection(T)",
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",  # transformers' own spelling
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    "visual_projection.weight": "visual.proj(T)",
}
_TOWERS = {"text_model": "transformer.resblocks", "vision_model": "visual.transformer.resblocks"}
# inside one encoder layer: transformers module -> open_clip module (q, k and v are joined separately)
_LAYER_MODULES = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                  "self_attn.out_proj": "attn.out_proj"}
_LAYER_KEY = re.compile(r"^(?P<tower>text_model|vision_model)\.encoder\.layers\.(?P<index>\d+)\.(?P<rest>.+)$")
_QKV = re.compile(r"^self_attn\.(?P<which>[qkv])_proj\.(?P<kind>weight|bias)$")
_IGNORED = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")  # buffers of old saves


@dataclass
class Architecture:
    """A CLIPModel config.json as open_clip builds it.

    Attributes:
        embed_dim: the joint embedding size (``projection_dim``).
        quick_gelu: the MLPs' activation: QuickGELU (OpenAI's) or exact GELU (LAION's).
        vision_cfg: open_clip's ``CLIPVisionCfg`` fields (image and patch size, depth, width, head width, MLP ratio).
        text_cfg: open_clip's ``CLIPTextCfg`` fields (context, vocabulary, width, heads, depth, MLP ratio).
        layer_norm_eps: (text, image) LayerNorm epsilons; open_clip's own default is 1e-5.
    """

    embed_dim: int
    quick_gelu: bool
    vision_cfg: dict[str, Any]
    text_cfg: dict[str, Any]
    layer_norm_eps: tuple[float, float]


@dataclass
class TransformersClip:
    """A transformers CLIP checkpoint read into open_clip.

    Attributes:
        model: the open_clip ``CLIP`` with the checkpoint's weights (float32, eval mode).
        name: the open_clip architecture of the same sizes (the caller's name when it fits), else a
            description such as ``"transformers-CLIP-ViT-p16-w64-d2-224"``.
        source: what the weights came from: the folder, or ``hf-hub:org/name[@revision]`` for a Hub id.
        mean, std: the image normalisation of its ``preprocessor_config.json`` (OpenAI's when absent).
        image_size: the square input size of its image tower.
        context_length: the text tower's token window.
    """

    model: nn.Module
    name: str
    source: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int
    context_length: int


def is_transformers_source(source: str | os.PathLike[str]) -> bool:
    """Whether load_clip reads ``source`` as a transformers CLIP: an existing folder, or (nothing local of
    that name) a Hub id, ``org/name[@revision]`` or ``hf-hub:org/name[@revision]`` (:func:`mvpseg.hub.parse_hub_id`)."""
    from .hub import parse_hub_id

    text = os.fspath(source)
    local = Path(text).expanduser()
    if local.is_dir() or _folder_of(local) is not None:
        return True
    return not local.exists() and parse_hub_id(text) is not None


def _folder_of(path: Path) -> Path | None:
    """The transformers folder a weights file belongs to (model.safetensors or pytorch_model.bin next to a
    config.json), or None."""
    if path.is_file() and path.name in (WEIGHTS_FILE, PICKLE_WEIGHTS) and (path.parent / CONFIG_FILE).is_file():
        return path.parent
    return None


class TransformersClipError(RuntimeError):
    """A transformers CLIP that cannot be loaded; :func:`mvpseg.load_clip` raises it as ClipWeightsUnavailable."""


def _error(message: str) -> Exception:
    return TransformersClipError(message)


def _read_json(path: Path, where: str) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _error(f"{where}: {path.name} is not readable JSON ({error})") from error
    if not isinstance(value, dict):
        raise _error(f"{where}: {path.name} holds no JSON object")
    return value


def _clip_config(folder: Path, where: str) -> dict[str, Any]:
    """The folder's config.json, checked to describe a ``CLIPModel``; anything else is one line naming it."""
    if not (folder / CONFIG_FILE).is_file():
        found = sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []
        hint = (" (an open_clip folder: pass its open_clip_model.safetensors file)"
                if "open_clip_model.safetensors" in found else "")
        listed = ", ".join(found[:6]) + (", ..." if len(found) > 6 else "")
        raise _error(f"{where} has no {CONFIG_FILE}, so it is no transformers CLIP folder (it holds "
                     f"{listed or 'nothing'}){hint}; pass a CLIPModel folder, a Hub id or a weights file")
    config = _read_json(folder / CONFIG_FILE, where)
    model_type = config.get("model_type")
    architectures = ", ".join(map(str, config.get("architectures") or [])) or "no architectures listed"
    if model_type == "clip":
        return config
    if model_type is None and config.get("kind") in ("prompts", "student"):
        raise _error(f"{where} holds an mvpseg {config['kind']} checkpoint, not CLIP weights: pass it with "
                     f"--{config['kind']} (Python: {config['kind']}=...)")
    holds = f"a transformers {model_type!r} model ({architectures})" if model_type else \
        f"a config.json without model_type ({architectures})"
    raise _error(f"{where} holds {holds}, not a CLIP: mvpseg loads transformers CLIPModel checkpoints "
                 f"(model_type 'clip'), open_clip names and tags, and OpenAI or open_clip weights files")


def _tower_config(config: dict[str, Any], tower: str, defaults: dict[str, Any]) -> dict[str, Any]:
    """One tower's settings as transformers reads them: the legacy ``<tower>_config_dict`` over the defaults
    where a file has one (it then replaces ``<tower>_config`` whole), else ``<tower>_config`` over them."""
    legacy = config.get(f"{tower}_config_dict")
    return {**defaults, **(legacy if legacy is not None else config.get(f"{tower}_config") or {})}


def _mlp_ratio(hidden: int, width: int) -> float:
    """open_clip's ``mlp_ratio`` for an MLP ``hidden`` wide: it builds ``int(width * ratio)`` units."""
    ratio = hidden / width
    return ratio if int(width * ratio) == hidden else (hidden + 0.5) / width


def _heads(settings: dict[str, Any], tower: str, where: str) -> int:
    width, heads = int(settings["hidden_size"]), int(settings["num_attention_heads"])
    if heads < 1 or width % heads:
        raise _error(f"{where}: the {tower} tower's width {width} does not split into {heads} heads")
    return heads


def architecture_of(config: dict[str, Any], where: str = "the checkpoint") -> Architecture:
    """The open_clip architecture of a CLIPModel config.json (transformers' defaults for what it leaves out).

    Raises:
        TransformersClipError: an activation open_clip's CLIP does not have, towers with different ones,
            or a text vocabulary that is not CLIP's BPE (one line each).
    """
    text = _tower_config(config, "text", TEXT_DEFAULTS)
    vision = _tower_config(config, "vision", VISION_DEFAULTS)
    activations = {str(text["hidden_act"]), str(vision["hidden_act"])}
    unknown = activations - set(ACTIVATIONS)
    if unknown:
        raise _error(f"{where} uses the activation {sorted(unknown)[0]!r}: open_clip's CLIP has quick_gelu and gelu only")
    if len(activations) > 1:
        raise _error(f"{where} uses {text['hidden_act']!r} in its text tower and {vision['hidden_act']!r} in its image "
                     f"tower: open_clip's CLIP uses one activation for both")
    if int(text["vocab_size"]) != BPE_VOCABULARY or int(vision.get("num_channels", 3)) != 3:
        raise _error(f"{where} has a text vocabulary of {text['vocab_size']} tokens and {vision.get('num_channels')} "
                     f"image channels: mvpseg tokenizes with CLIP's BPE ({BPE_VOCABULARY} tokens) and reads RGB")
    vision_width, text_width = int(vision["hidden_size"]), int(text["hidden_size"])
    vision_heads = _heads(vision, "image", where)
    text_heads = _heads(text, "text", where)
    return Architecture(
        embed_dim=int(config.get("projection_dim", 512)),
        quick_gelu=ACTIVATIONS[str(vision["hidden_act"])],
        vision_cfg={"image_size": int(vision["image_size"]), "patch_size": int(vision["patch_size"]),
                    "layers": int(vision["num_hidden_layers"]), "width": vision_width,
                    "head_width": vision_width // vision_heads,
                    "mlp_ratio": _mlp_ratio(int(vision["intermediate_size"]), vision_width)},
        text_cfg={"context_length": int(text["max_position_embeddings"]), "vocab_size": int(text["vocab_size"]),
                  "width": text_width, "heads": text_heads, "layers": int(text["num_hidden_layers"]),
                  "mlp_ratio": _mlp_ratio(int(text["intermediate_size"]), text_width)},
        layer_norm_eps=(float(text["layer_norm_eps"]), float(vision["layer_norm_eps"])),
    )


def _same_sizes(architecture: Architecture, candidate: dict[str, Any] | None) -> bool:
    """Whether an open_clip model config builds the same plain CLIP (every field, defaults included; any activation)."""
    if not candidate or candidate.get("embed_dim") != architecture.embed_dim:
        return False
    if set(candidate) - {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu"}:
        return False  # custom text towers, CoCa's decoder, cast dtypes, ...
    try:
        return (CLIPVisionCfg(**candidate.get("vision_cfg", {})) == CLIPVisionCfg(**architecture.vision_cfg)
                and CLIPTextCfg(**candidate.get("text_cfg", {})) == CLIPTextCfg(**architecture.text_cfg))
    except TypeError:  # a field this open_clip does not know
        return False


def architecture_name(architecture: Architecture, preferred: str | None = None) -> str:
    """The open_clip name of an architecture: ``preferred`` when its sizes are these (the activation may
    differ: mvpseg calls OpenAI's QuickGELU ViT-B/16 "ViT-B-16"), else the shortest name with these sizes
    ("ViT-L-14" before "ViT-L-14-quickgelu"), else a description of the sizes."""
    if preferred is not None and _same_sizes(architecture, open_clip.get_model_config(preferred)):
        return preferred
    matches = [name for name in open_clip.list_models() if _same_sizes(architecture, open_clip.get_model_config(name))]
    if matches:
        return min(matches, key=lambda name: (len(name), name))
    vision = architecture.vision_cfg
    return (f"transformers-CLIP-ViT-p{vision['patch_size']}-w{vision['width']}-d{vision['layers']}-"
            f"{vision['image_size']}")


def open_clip_state_dict(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers ``CLIPModel`` state dict renamed to open_clip's ``CLIP`` (float32).

    Per encoder layer the query, key and value projections are concatenated, ``(3W, W)`` and ``(3W,)``,
    into ``attn.in_proj_weight`` and ``attn.in_proj_bias``; the image and text projections, stored
    ``(D, W)`` as ``nn.Linear`` weights, become open_clip's ``(W, D)`` matrices.

    Raises:
        TransformersClipError: a tensor this map does not know (the first one is named), or a layer
            missing its query, key or value.
    """
    state: dict[str, torch.Tensor] = {}
    joined: dict[tuple[str, str], dict[str, torch.Tensor]] = {}  # (open_clip block prefix, weight|bias) -> {q, k, v}
    for key, tensor in weights.items():
        tensor = tensor.float() if tensor.is_floating_point() else tensor
        if key in _IGNORED:
            continue
        if key in _TENSOR_KEYS:
            target = _TENSOR_KEYS[key]
            if target.endswith("(T)"):
                state[target[:-3]] = tensor.t().contiguous()  # (D, W) -> (W, D)
            else:
                state[target] = tensor
            continue
        layer = _LAYER_KEY.match(key)
        if layer is None:
            raise _error(f"the tensor {key!r} is not part of a transformers CLIPModel: not a CLIP checkpoint")
        prefix = f"{_TOWERS[layer['tower']]}.{layer['index']}"
        rest = layer["rest"]
        if (qkv := _QKV.match(rest)) is not None:
            joined.setdefault((prefix, qkv["kind"]), {})[qkv["which"]] = tensor
            continue
        module, _, kind = rest.rpartition(".")
        if module not in _LAYER_MODULES:
            raise _error(f"the tensor {key!r} is not part of a transformers CLIPModel: not a CLIP checkpoint")
        state[f"{prefix}.{_LAYER_MODULES[module]}.{kind}"] = tensor
    for (prefix, kind), parts in joined.items():
        if set(parts) != {"q", "k", "v"}:
            raise _error(f"the checkpoint's layer {prefix} lacks its {', '.join(sorted({'q', 'k', 'v'} - set(parts)))} "
                         f"projection {kind}: an incomplete CLIP checkpoint")
        state[f"{prefix}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])  # (3W, W) / (3W,)
    return state


def _read_weights(folder: Path, where: str) -> dict[str, torch.Tensor]:
    """The folder's tensors: model.safetensors, its shards, else pytorch_model.bin (no code is unpickled)."""
    from safetensors.torch import load_file

    try:
        if (folder / WEIGHTS_FILE).is_file():
            return load_file(folder / WEIGHTS_FILE)
        if (folder / WEIGHTS_INDEX).is_file():
            shards = sorted(set(_read_json(folder / WEIGHTS_INDEX, where).get("weight_map", {}).values()))
            weights: dict[str, torch.Tensor] = {}
            for shard in shards:
                weights.update(load_file(folder / shard))
            return weights
        if (folder / PICKLE_WEIGHTS).is_file():
            loaded = torch.load(folder / PICKLE_WEIGHTS, map_location="cpu", weights_only=True)
            return dict(loaded)
    except (OSError, RuntimeError, ValueError, pickle.UnpicklingError) as error:  # truncated or foreign files
        raise _error(f"{where}: its weights could not be read ({str(error).splitlines()[0][:200]})") from error
    raise _error(f"{where} holds a CLIP config.json but no weights ({WEIGHTS_FILE}, {WEIGHTS_INDEX} or "
                 f"{PICKLE_WEIGHTS})")


def _normalisation(folder: Path, where: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The image mean and std of the folder's preprocessor_config.json, else OpenAI's."""
    mean, std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
    if (folder / PREPROCESSOR_FILE).is_file():
        config = _read_json(folder / PREPROCESSOR_FILE, where)
        mean, std = config.get("image_mean") or mean, config.get("image_std") or std
    if not all(isinstance(values, (list, tuple)) and len(values) == 3 for values in (mean, std)):
        raise _error(f"{where}: {PREPROCESSOR_FILE} gives the image mean {mean} and std {std}, not three values each")
    return tuple(float(value) for value in mean), tuple(float(value) for value in std)


def _fetch(repo: str, revision: str | None) -> Path:
    """The Hub repository's CLIP files in huggingface_hub's cache (fetched unless offline or cached)."""
    from .hub import HubError, download

    instead, files = "pass a local CLIPModel folder with --clip-weights", (CONFIG_FILE, PREPROCESSOR_FILE, WEIGHTS_FILE)
    try:
        folder = download(repo, revision, patterns=HUB_FILES, instead=instead, files=files)
        if not any((folder / name).is_file() for name in (WEIGHTS_FILE, WEIGHTS_INDEX)):  # an old repository
            folder = download(repo, revision, patterns=[PICKLE_WEIGHTS], instead=instead,
                               files=(CONFIG_FILE, PICKLE_WEIGHTS))
    except HubError as error:
        raise _error(str(error)) from error
    return folder


def load_transformers_clip(source: str | os.PathLike[str], preferred_name: str | None = None,
                           device: str | torch.device = "cpu") -> TransformersClip:
    """Read a transformers CLIPModel checkpoint (a folder, or a Hub id fetched into the cache) into open_clip.

    Args:
        source: a folder with config.json and model.safetensors, or ``org/name[@revision]`` /
            ``hf-hub:org/name[@revision]`` on the Hugging Face Hub.
        preferred_name: the open_clip name to call the architecture by when its sizes are the checkpoint's
            (see :func:`architecture_name`); the checkpoint's config.json decides the architecture either way.
        device: where to put the model.

    Raises:
        TransformersClipError: not a CLIPModel (one line naming what the folder holds), weights that do
            not fit its config.json, or a Hub model that cannot be had.
    """
    from .hub import parse_hub_id

    text = os.fspath(source)
    local = Path(text).expanduser()
    if (parent := _folder_of(local)) is not None:  # the folder's own weights file: the folder
        local, text = parent, str(parent)
    if local.is_dir():
        folder, where, recorded = local, str(local), text
    else:
        parsed = parse_hub_id(text)
        if parsed is None:
            raise _error(f"{text} is neither a folder nor a Hugging Face Hub id (org/name)")
        repo, revision = parsed
        folder = _fetch(repo, revision)
        where = recorded = f"hf-hub:{repo}" + (f"@{revision}" if revision else "")
    architecture = architecture_of(_clip_config(folder, where), where)
    state = open_clip_state_dict(_read_weights(folder, where))
    with torch.device("meta"):  # no random initialisation of weights that are replaced at once (15 s for ViT-L)
        model = open_clip.CLIP(embed_dim=architecture.embed_dim, vision_cfg=CLIPVisionCfg(**architecture.vision_cfg),
                               text_cfg=CLIPTextCfg(**architecture.text_cfg), quick_gelu=architecture.quick_gelu)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise _error(f"{where}: its weights do not fit its config.json "
                     f"({(lines[1] if len(lines) > 1 else lines[0])[:200]})") from error
    context = architecture.text_cfg["context_length"]
    # the one buffer a state dict does not hold: the text tower's causal mask, -inf above the diagonal (L, L)
    model.attn_mask = torch.full((context, context), float("-inf")).triu_(1)
    text_eps, vision_eps = architecture.layer_norm_eps
    for module_name, module in model.named_modules():
        if isinstance(module, nn.LayerNorm):
            module.eps = vision_eps if module_name.startswith("visual.") else text_eps
    mean, std = _normalisation(folder, where)
    vision = architecture.vision_cfg
    open_clip.set_model_preprocess_cfg(model, {"size": vision["image_size"], "mean": mean, "std": std,
                                               "interpolation": "bicubic", "resize_mode": "shortest"})
    return TransformersClip(model=model.to(device).eval(), name=architecture_name(architecture, preferred_name),
                            source=recorded, mean=mean, std=std, image_size=vision["image_size"],  # type: ignore[arg-type]
                            context_length=context)
