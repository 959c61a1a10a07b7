"""Where a checkpoint comes from: a local file or folder, or a Hugging Face Hub id resolved into its cache.

The rule, wherever mvpseg accepts a prompt or student checkpoint (``Segmenter.from_pretrained``,
``--prompts``, ``--student``, ``mvpseg serve``, ``transfer --prompts``):

1. A local path that exists always wins: a checkpoint file, or a model folder (written by
   :func:`mvpseg.publish.save_pretrained` or ``mvpseg push --to``, or a downloaded Hub repository).
2. Otherwise ``org/name``, ``org/name@revision`` (a branch, tag or commit) or open_clip's spelling
   ``hf-hub:org/name[@revision]`` is a model on the Hugging Face Hub, fetched by huggingface_hub into
   its cache (``HF_HUB_CACHE``, default ``~/.cache/huggingface/hub``) and loaded from there. A name
   ending in a file suffix (``runs/prompts.safetensors``) is a missing local file, never a Hub id.
3. Offline (``HF_HUB_OFFLINE=1``) a cached model loads without a single network call; without network
   and without the variable, huggingface_hub's failed call falls back to the cache. A model or a
   revision that is not there is one line saying what is missing and how to get it.

A transformers CLIP named by a Hub id (``--clip-weights org/name``) is fetched the same way (:func:`download`,
by :mod:`mvpseg.hf_clip`). This module is a leaf: nothing in the core imports it at module level, and it
imports neither torch nor huggingface_hub until a Hub id is resolved.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

__all__ = ["CONFIG_FILE", "HubError", "checkpoint_in_folder", "download", "hub_cache", "is_offline", "parse_hub_id",
           "resolve"]

#: The file of a model folder that says what it holds (:func:`mvpseg.publish.save_pretrained` writes it).
CONFIG_FILE = "config.json"
#: The checkpoint file of a model folder, by kind, when its config.json names none.
DEFAULT_FILES = {"prompts": "prompts.safetensors", "student": "student.safetensors"}
#: Suffixes that make a name a file name rather than a Hub id.
FILE_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".onnx", ".json")
#: The files of a Hub model that mvpseg fetches (the checkpoint, its config.json, the model card).
HUB_PATTERNS = ["*.safetensors", "*.json", "README.md"]

_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[\w./-]+))?$")


class HubError(ValueError):
    """A model that cannot be found locally or on the Hub (its message is one line saying what to do)."""


def parse_hub_id(source: str | os.PathLike[str]) -> tuple[str, str | None] | None:
    """``(repo_id, revision or None)`` when ``source`` reads as a Hub id, else None (a local path).

    ``hf-hub:org/name`` is always a Hub id; ``org/name[@rev]`` is one unless it ends in a file suffix.
    """
    text = os.fspath(source)
    forced = text.startswith("hf-hub:")
    text = text[len("hf-hub:"):] if forced else text
    match = _HUB_ID.match(text)
    if match is None or (not forced and match["repo"].lower().endswith(FILE_SUFFIXES)):
        return None
    return match["repo"], match["revision"]


def is_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set to a true value, read now."""
    values = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return any(str(value).strip().upper() in {"1", "ON", "YES", "TRUE"} for value in values if value)


def hub_cache() -> Path:
    """huggingface_hub's cache folder, read from the environment now (``HF_HUB_CACHE``, else ``HF_HOME/hub``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def read_folder_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """A model folder's config.json ({} when it has none)."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise HubError(f"{path} is not readable JSON ({error}): not an mvpseg model folder") from error
    return config if isinstance(config, dict) else {}


def checkpoint_in_folder(folder: str | os.PathLike[str], kind: str | None = None, name: str | None = None) -> Path:
    """The checkpoint file of a model folder: the one its config.json names, else ``prompts.safetensors``
    or ``student.safetensors``.

    Args:
        folder: a folder written by :func:`mvpseg.publish.save_pretrained`, or a downloaded Hub snapshot.
        kind: "prompts" or "student": what the caller expects (a folder of the other kind is refused).
        name: how to call the folder in errors (a Hub id), default its path.
    """
    folder, name = Path(folder), name or str(folder)
    config = read_folder_config(folder)
    held = config.get("kind")
    if kind is not None and held is not None and held != kind:
        option = "--student" if held == "student" else "--prompts"
        raise HubError(f"{name} holds a {held} checkpoint, not {kind}: pass it with {option} (Python: {held}=...)")
    candidates = [config["file"]] if isinstance(config.get("file"), str) else (
        [DEFAULT_FILES[kind]] if kind in DEFAULT_FILES else list(DEFAULT_FILES.values()))
    for candidate in candidates:
        path = folder / candidate
        if Path(candidate).name == candidate and path.is_file():
            return path
    raise HubError(f"{name} holds no mvpseg checkpoint ({' or '.join(candidates)}): "
                   f"not a model written by mvpseg push or save_pretrained")


def resolve(source: str | os.PathLike[str], kind: str | None = None) -> Path:
    """The local checkpoint file of a source: a file, a model folder, or a Hub id (fetched into the cache).

    Args:
        source: a path, or ``org/name``, ``org/name@revision``, ``hf-hub:org/name[@revision]``.
        kind: "prompts" or "student", what the caller loads (chooses the file of a folder, refuses the other kind).

    Returns:
        A path to a checkpoint file. A local path that does not exist and is no Hub id is returned as it
        is: the reader then says the file is missing.

    Raises:
        HubError: a Hub model or revision that cannot be found (one line: what is missing, how to get it).
    """
    text = os.fspath(source)
    local = Path(text).expanduser()
    if local.is_dir():
        return checkpoint_in_folder(local, kind)
    if local.exists() or (parsed := parse_hub_id(text)) is None:
        return local
    repo, revision = parsed
    folder = download(repo, revision)
    return checkpoint_in_folder(folder, kind, name=f"{repo}@{revision}" if revision else repo)


def download(repo: str, revision: str | None, patterns: list[str] | None = None,
              instead: str = "pass a local checkpoint file", files: tuple[str, ...] = ()) -> Path:
    """The snapshot folder of a Hub model in the cache, fetched first unless offline; or one HubError line.

    Args:
        repo, revision: the Hub model.
        patterns: the files to fetch (default :data:`HUB_PATTERNS`, an mvpseg model's).
        instead: what the error lines offer instead of the Hub ("pass a local checkpoint file").
        files: the files the suggested ``hf download`` command names (default: the whole model).
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline, cache = is_offline(), hub_cache()
    at = "".join(f" {name}" for name in files) + (f" --revision {revision}" if revision else "")
    try:
        return Path(snapshot_download(repo, revision=revision, cache_dir=str(cache), local_files_only=offline,
                                      allow_patterns=patterns or HUB_PATTERNS))
    except RevisionNotFoundError as error:
        raise HubError(f"{repo} has no revision {revision!r} on the Hugging Face Hub: give a branch, tag or "
                       f"commit it has, or leave out @{revision} for its main branch") from error
    except GatedRepoError as error:
        raise HubError(f"{repo} is gated on the Hugging Face Hub: accept its terms on huggingface.co/{repo}, "
                       f"then log in with `hf auth login`") from error
    except RepositoryNotFoundError as error:
        raise HubError(f"no model {repo} on the Hugging Face Hub: check the name (a private model needs "
                       f"`hf auth login`), or {instead}") from error
    except HFValidationError as error:
        raise HubError(f"{repo!r} is not a valid Hugging Face Hub id (org/name[@revision])") from error
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
        stored = cache / f"models--{repo.replace('/', '--')}"
        if revision and stored.is_dir():
            missing = f"revision {revision!r} of {repo} is not in the Hugging Face cache ({cache})"
        else:
            missing = f"{repo} is not in the Hugging Face cache ({cache})"
        why = "HF_HUB_OFFLINE is set" if offline else "the Hub cannot be reached"
        raise HubError(f"{missing} and {why}: fetch it where there is network with `hf download {repo}{at}` "
                       f"(and copy that cache here), or {instead}") from error
