"""Publishing a model: a folder a Hub id can name, written locally or uploaded to the Hugging Face Hub.

:func:`save_pretrained` writes three files into a folder:

- the checkpoint, ``prompts.safetensors`` or ``student.safetensors``, in mvpseg's own format
  (:mod:`mvpseg.checkpoint`), checked whole before it is copied;
- ``config.json``: the mvpseg version, the kind, the CLIP (architecture, weights' tag, fingerprint),
  the class names trained on, K, the training dataset, and the checkpoint's configuration;
- ``README.md``, a model card: front matter (``library_name: mvpseg``, ``pipeline_tag:
  image-segmentation``, licence, tags), how to load it in two lines, the CLIP it needs and that
  CLIP's licence, the training data, and the metrics of a given ``metrics.json``.

Such a folder loads like a Hub id (:mod:`mvpseg.hub`); :func:`push_to_hub` stages it and uploads it
with huggingface_hub. A leaf: nothing in the core imports this module.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from .checkpoint import CheckpointError, read_prompt_checkpoint, read_student_checkpoint
from .files import atomic_write, write_text
from .hub import CONFIG_FILE, DEFAULT_FILES, checkpoint_in_folder
from .version import __version__

if TYPE_CHECKING:
    from .inference import Segmenter
    from .model import MVPSeg
    from .student import Student

__all__ = ["clip_licence", "model_card", "model_config", "push_to_hub", "save_pretrained", "upload"]

#: Licences of the CLIP weights mvpseg names, by open_clip tag (others: see open_clip's model list).
CLIP_LICENCES = {
    "openai": "MIT (OpenAI CLIP)",
    "mvpseg": "MIT (the tiny CLIP shipped with mvpseg)",
}

#: The metrics a model card shows, in this order, with their names.
CARD_METRICS = (("miou", "mIoU"), ("miou_seen", "mIoU(S)"), ("miou_unseen", "mIoU(U)"), ("hiou", "hIoU"),
                ("pixel_acc", "pixel accuracy"))


def clip_licence(pretrained: str | None) -> str:
    """The licence of a CLIP's weights, as far as mvpseg knows it (LAION's open_clip weights are MIT)."""
    if pretrained is None:
        return "none (random weights)"
    if pretrained in CLIP_LICENCES:
        return CLIP_LICENCES[pretrained]
    if pretrained.startswith("laion"):
        return "MIT (open_clip, trained on LAION)"
    return f"see open_clip's list of pretrained models for {pretrained!r}"


def _read_any(path: Path, with_tensors: bool) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(kind, tensors, metadata) of a prompt or student checkpoint, or the prompt reader's error."""
    try:
        tensors, metadata = read_prompt_checkpoint(path, with_tensors=with_tensors)
        return "prompts", tensors, metadata
    except CheckpointError as prompts_error:
        try:
            tensors, metadata = read_student_checkpoint(path, with_tensors=with_tensors)
        except CheckpointError:
            raise prompts_error from None
        return "student", tensors, metadata


def find_checkpoint(source: str | os.PathLike[str]) -> Path:
    """The checkpoint of a file, a run folder (``student.safetensors`` first, else ``prompts.safetensors``)
    or a model folder."""
    path = Path(source)
    if path.is_file():
        return path
    if not path.is_dir():
        raise CheckpointError(f"not found: {path} (give a checkpoint file or a run folder)")
    if (path / CONFIG_FILE).is_file() and "kind" in json.loads((path / CONFIG_FILE).read_text(encoding="utf-8")):
        return checkpoint_in_folder(path)
    for name in (DEFAULT_FILES["student"], DEFAULT_FILES["prompts"]):
        if (path / name).is_file():
            return path / name
    raise CheckpointError(f"{path} holds neither student.safetensors nor prompts.safetensors: give the checkpoint file")


def model_config(kind: str, tensors: dict[str, Any], metadata: dict[str, Any]) -> dict[str, Any]:
    """What config.json says of a checkpoint (kind, file, CLIP, class names, K, dataset, configuration)."""
    extra, clip = metadata.get("extra") or {}, metadata.get("clip") or {}
    if kind == "prompts":
        num_prompts = metadata["config"].get("num_prompts")
    else:
        contexts = tensors.get("prompts.contexts")
        num_prompts = int(contexts.shape[0]) - 1 if contexts is not None else (
            (metadata.get("teacher") or {}).get("config", {}).get("num_prompts"))
    config = {
        "library_name": "mvpseg",
        "mvpseg_version": __version__,
        "checkpoint_mvpseg_version": metadata.get("mvpseg_version"),
        "kind": kind,
        "file": DEFAULT_FILES[kind],
        "clip": {"architecture": clip.get("name"), "pretrained": clip.get("pretrained"),
                 "fingerprint": clip.get("fingerprint")},
        "class_names": extra.get("trained_on") or extra.get("class_names"),
        "num_prompts": num_prompts,
        "dataset": extra.get("dataset"),
        "config": metadata.get("config"),
    }
    if kind == "student":
        config["teacher"] = metadata.get("teacher")
        config["unseen"] = extra.get("unseen")
    return config


def _metric(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1f}"


def model_card(config: dict[str, Any], metrics: dict[str, Any] | None = None, repo: str | None = None,
               licence: str = "mit") -> str:
    """The README.md of a model folder: front matter, loading, CLIP, training data, metrics."""
    kind, clip = config["kind"], config["clip"]
    name = repo or "ORG/NAME"
    what = "MVP-SEG prompts" if kind == "prompts" else "an MVP-SEG+ student"
    dataset = config.get("dataset") or "unknown"
    front = ["---", "library_name: mvpseg", "pipeline_tag: image-segmentation", f"license: {licence}", "tags:",
             "- mvpseg", "- open-vocabulary-segmentation", "- semantic-segmentation", "- clip",
             f"- {'mvp-seg' if kind == 'prompts' else 'mvp-seg-plus'}"]
    if config.get("dataset"):
        front.append(f"- {config['dataset']}")
    front.append("---")
    classes = config.get("class_names") or []
    lines = [
        *front, "",
        f"# {name.split('/')[-1]}", "",
        f"{'Learned multi-view prompts (K = ' + str(config.get('num_prompts')) + ')' if kind == 'prompts' else 'An MVP-SEG+ student network'} "
        f"for open-vocabulary semantic segmentation with [mvpseg](https://pypi.org/project/mvpseg/) "
        f"(MVP-SEG, arXiv 2304.06957): {what} that segment any list of class names.", "",
        "## Use", "",
        "```python",
        "from mvpseg import Segmenter",
        f"labels = Segmenter.from_pretrained({kind}=\"{name}\").predict(\"photo.jpg\", [\"cat\", \"dog\", \"grass\"]).labels",
        "```", "",
        f"or `mvpseg segment photo.jpg --classes \"cat,dog,grass\" --{kind} {name}`.", "",
        "## CLIP", "",
        f"It runs on the frozen CLIP `{clip.get('architecture')}` with the weights `{clip.get('pretrained')}` "
        f"(fingerprint `{clip.get('fingerprint')}`), which mvpseg loads through open_clip; "
        f"their licence: {clip_licence(clip.get('pretrained'))}.", "",
        "## Training data", "",
        f"Dataset: {dataset}; {len(classes)} class names" + (f": {', '.join(map(str, classes[:40]))}"
                                                             + (", ..." if len(classes) > 40 else "") if classes else "")
        + ".", "",
    ]
    if kind == "student" and config.get("unseen"):
        lines += [f"Unseen classes (taught by the prompts' pseudo-labels): {', '.join(config['unseen'])}.", ""]
    lines += ["## Metrics", ""]
    if metrics:
        setup = metrics.get("setup") or {}
        where = " ".join(str(part) for part in (setup.get("dataset"), setup.get("split")) if part)
        lines += [f"Evaluated by `mvpseg eval`{' on ' + where if where else ''}:", "",
                  "| " + " | ".join(label for _, label in CARD_METRICS) + " |",
                  "|" + "---|" * len(CARD_METRICS),
                  "| " + " | ".join(_metric(metrics.get(key)) for key, _ in CARD_METRICS) + " |", ""]
    else:
        lines += ["Not evaluated here.", ""]
    lines += [f"Written by mvpseg {config['mvpseg_version']}.", ""]
    return "\n".join(lines)


def _read_metrics(metrics: str | os.PathLike[str] | dict[str, Any] | None) -> dict[str, Any] | None:
    if metrics is None or isinstance(metrics, dict):
        return metrics
    path = Path(metrics)
    if not path.is_file():
        raise ValueError(f"metrics file not found: {path} (give the metrics.json of mvpseg eval)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not JSON ({error}): give the metrics.json of mvpseg eval") from error
    if not isinstance(data, dict) or not any(key in data for key, _ in CARD_METRICS):
        raise ValueError(f"{path} holds no mIoU figures: give the metrics.json of mvpseg eval")
    return data


def save_pretrained(source: str | os.PathLike[str] | MVPSeg | Student | Segmenter, folder: str | os.PathLike[str],
                    metrics: str | os.PathLike[str] | dict[str, Any] | None = None, repo: str | None = None,
                    licence: str = "mit") -> Path:
    """Write a model folder: the checkpoint, config.json and a model card (README.md).

    Args:
        source: a checkpoint file, a run folder (its ``student.safetensors`` or ``prompts.safetensors``),
            or a model (:class:`mvpseg.MVPSeg` with prompts, a student, or a :class:`mvpseg.Segmenter` around
            either), saved in mvpseg's format.
        folder: the destination (created; the three files are replaced, nothing else is touched).
        metrics: a ``metrics.json`` of ``mvpseg eval`` (or its dict) for the card.
        repo: the Hub id the card's loading lines name (default a placeholder).
        licence: the ``license`` of the card's front matter.

    Returns:
        The folder. It loads like a Hub id: ``Segmenter.from_pretrained(prompts=folder)``.

    Raises:
        CheckpointError: a file that is not a complete mvpseg checkpoint (nothing is written).
    """
    folder = Path(folder)
    card_metrics = _read_metrics(metrics)
    with tempfile.TemporaryDirectory() as scratch:
        if isinstance(source, (str, os.PathLike)):
            path = find_checkpoint(source)
        else:
            model = cast("MVPSeg | Student", getattr(source, "model", source))  # a Segmenter's model, or the model itself
            path = _save_model(model, Path(scratch) / "model.safetensors")
        kind, tensors, metadata = _read_any(path, with_tensors=True)  # every tensor read: a truncated file fails here
        config = model_config(kind, tensors, metadata)
        target = folder / DEFAULT_FILES[kind]
        if path.resolve() != target.resolve():
            atomic_write(target, lambda tmp: shutil.copyfile(path, tmp))
    stale = folder / DEFAULT_FILES["student" if kind == "prompts" else "prompts"]
    if stale.is_file() and (folder / CONFIG_FILE).is_file():
        stale.unlink()  # a previous model of the other kind in this folder
    write_text(folder / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
    write_text(folder / "README.md", model_card(config, card_metrics, repo=repo, licence=licence))
    return folder


def _save_model(model: MVPSeg | Student, path: Path) -> Path:
    from .checkpoint import save_prompt_checkpoint, save_student_checkpoint

    if hasattr(model, "backbone"):  # a student
        return save_student_checkpoint(path, model, teacher={})  # type: ignore[arg-type]
    return save_prompt_checkpoint(path, model)  # type: ignore[arg-type]


def upload(folder: str | os.PathLike[str], repo: str, private: bool = False, message: str | None = None) -> str:
    """Upload a folder to the Hub model ``repo`` (created when missing); returns the commit's URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo, private=private, exist_ok=True)
    info = api.upload_folder(repo_id=repo, folder_path=str(folder), commit_message=message or "Upload with mvpseg push")
    return str(getattr(info, "commit_url", info))


def push_to_hub(source: str | os.PathLike[str] | MVPSeg | Student, repo: str,
                metrics: str | os.PathLike[str] | dict[str, Any] | None = None, licence: str = "mit",
                private: bool = False, message: str | None = None) -> str:
    """:func:`save_pretrained` into a temporary folder, then :func:`upload` it to ``repo``; returns the commit's URL."""
    from .hub import parse_hub_id

    parsed = parse_hub_id(repo)
    if parsed is None or parsed[1] is not None:
        raise ValueError(f"--repo takes a Hub id org/name, not {repo!r}")
    with tempfile.TemporaryDirectory() as staging:
        save_pretrained(source, staging, metrics=metrics, repo=parsed[0], licence=licence)
        return upload(staging, parsed[0], private=private, message=message)
