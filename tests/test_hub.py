"""Hub ids and model folders: a cache laid out as huggingface_hub lays it, offline loads without a network
call, one line for a missing model or revision; push and save_pretrained; strict loads."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import httpx2
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import mvpseg
from mvpseg import publish
from mvpseg.checkpoint import CheckpointError
from mvpseg.cli import main
from mvpseg.hub import HubError, parse_hub_id, resolve
from mvpseg.world.prompts_asset import WORLD_PROMPTS

COMMIT = "0123456789abcdef0123456789abcdef01234567"
NAMES = ["stripes", "grass", "sky"]


def lay_out_cache(cache: Path, repo: str, folder: Path, commit: str = COMMIT, ref: str = "main") -> Path:
    """A model folder stored as huggingface_hub stores a download: blobs named by hash, a snapshot of links."""
    storage = cache / f"models--{repo.replace('/', '--')}"
    snapshot = storage / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (storage / "blobs").mkdir(exist_ok=True)
    for file in folder.iterdir():
        blob = storage / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, blob)
        (snapshot / file.name).symlink_to(Path("..", "..", "blobs", blob.name))
    (storage / "refs").mkdir(exist_ok=True)
    (storage / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every HTTP request huggingface_hub makes fails the test (the calls are recorded)."""
    calls: list[str] = []

    def refuse(self, request, *args, **kwargs):  # noqa: ANN001
        calls.append(str(request.url))
        raise AssertionError(f"network call to {request.url}")

    monkeypatch.setattr(httpx2.Client, "send", refuse)
    return calls


@pytest.fixture()
def world_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The shipped world prompts published as org/world-prompts in a fresh cache, offline."""
    folder = publish.save_pretrained(WORLD_PROMPTS, tmp_path / "published")
    cache = tmp_path / "hub"
    lay_out_cache(cache, "org/world-prompts", folder)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_hub_ids_and_paths_are_told_apart() -> None:
    assert parse_hub_id("org/name") == ("org/name", None)
    assert parse_hub_id("org/name@v1.0") == ("org/name", "v1.0")
    assert parse_hub_id("hf-hub:org/name@" + COMMIT) == ("org/name", COMMIT)
    assert parse_hub_id("runs/prompts.safetensors") is None  # a missing file, not a Hub id
    assert parse_hub_id("runs/voc/prompts") is None and parse_hub_id("prompts") is None
    assert parse_hub_id("/abs/name") is None


def test_hub_id_loads_from_the_cache_without_a_network_call(world_cache: Path, no_network: list[str]) -> None:
    image = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    config = mvpseg.InferenceConfig(short_side=None, mode="whole", precision="fp32")
    local = mvpseg.Segmenter.from_pretrained(prompts=WORLD_PROMPTS, device="cpu", config=config)
    for source in ("org/world-prompts", "hf-hub:org/world-prompts", f"org/world-prompts@{COMMIT}"):
        hub = mvpseg.Segmenter.from_pretrained(prompts=source, device="cpu", config=config)
        assert hub.clip.name == "mvpseg-tiny"  # the CLIP the checkpoint names, loaded as for a file
        np.testing.assert_array_equal(hub.predict(image, NAMES).labels, local.predict(image, NAMES).labels)
    assert no_network == []


def test_without_network_the_cache_answers(world_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    calls: list[str] = []

    def unreachable(self, request, *args, **kwargs):  # noqa: ANN001
        calls.append(str(request.url))
        raise httpx2.ConnectError("no route to host", request=request)

    monkeypatch.setattr(httpx2.Client, "send", unreachable)
    path = resolve("org/world-prompts", "prompts")
    assert path.name == "prompts.safetensors" and COMMIT in str(path)
    assert calls  # it tried the Hub first, then fell back to the cache


def test_missing_model_and_revision_each_get_their_line(world_cache: Path, no_network: list[str]) -> None:
    with pytest.raises(HubError, match=r"^org/other is not in the Hugging Face cache .* HF_HUB_OFFLINE is set: "
                                       r"fetch it .* `hf download org/other`") as missing:
        resolve("org/other", "prompts")
    with pytest.raises(HubError, match=r"^revision 'v2' of org/world-prompts is not in the Hugging Face cache .*"
                                       r"`hf download org/world-prompts --revision v2`") as revision:
        resolve("org/world-prompts@v2", "prompts")
    assert "\n" not in str(missing.value) + str(revision.value)
    assert no_network == []


def test_cli_reports_a_missing_hub_model_in_one_line(world_cache: Path, no_network: list[str], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "a.png"
    from PIL import Image

    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(image)
    status = main(["segment", str(image), "--classes", "sky,grass", "--student", "org/nothing", "--out",
                   str(tmp_path / "out"), "--quiet"])
    error = capsys.readouterr().err.strip()
    assert status == 2 and error.startswith("mvpseg: error: org/nothing is not in the Hugging Face cache")
    assert len(error.splitlines()) == 1


def test_a_folder_of_the_other_kind_is_refused(world_cache: Path, no_network: list[str]) -> None:
    with pytest.raises(HubError, match="holds a prompts checkpoint, not student: pass it with --prompts"):
        resolve("org/world-prompts", "student")


def test_save_pretrained_writes_checkpoint_config_and_card(tmp_path: Path) -> None:
    metrics = {"miou": 61.25, "miou_seen": 70.0, "miou_unseen": 50.5, "hiou": 58.7, "pixel_acc": 90.0,
               "setup": {"dataset": "world", "split": "val"}}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    folder = publish.save_pretrained(WORLD_PROMPTS, tmp_path / "model", metrics=tmp_path / "metrics.json",
                                     repo="org/world-prompts")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "prompts.safetensors"]
    assert (folder / "prompts.safetensors").read_bytes() == WORLD_PROMPTS.read_bytes()
    config = json.loads((folder / "config.json").read_text())
    assert config["kind"] == "prompts" and config["mvpseg_version"] == mvpseg.__version__
    assert config["clip"]["architecture"] == "mvpseg-tiny" and config["clip"]["pretrained"] == "mvpseg"
    assert len(config["clip"]["fingerprint"]) > 8 and config["num_prompts"] == 3
    assert config["dataset"] and config["class_names"]
    card = (folder / "README.md").read_text()
    front = card.split("---")[1]
    assert "library_name: mvpseg" in front and "pipeline_tag: image-segmentation" in front and "license: mit" in front
    assert 'Segmenter.from_pretrained(prompts="org/world-prompts")' in card
    assert "| 61.2 | 70.0 | 50.5 | 58.7 | 90.0 |" in card and "world val" in card
    assert "MIT (the tiny CLIP shipped with mvpseg)" in card


def test_push_stages_the_folder_and_uploads_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import HfApi

    staged: dict[str, object] = {}

    def create_repo(self, repo_id, private=None, exist_ok=False, **kwargs):  # noqa: ANN001  # the Hub, offline
        staged.update(created=repo_id, private=private, exist_ok=exist_ok)

    def upload_folder(self, repo_id, folder_path, commit_message=None, **kwargs):  # noqa: ANN001
        staged.update(repo=repo_id, files=sorted(p.name for p in Path(folder_path).iterdir()),
                      card=(Path(folder_path) / "README.md").read_text(), message=commit_message)
        return SimpleNamespace(commit_url="https://huggingface.co/org/world-prompts/commit/abc")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    (tmp_path / "metrics.json").write_text(json.dumps({"miou": 42.0, "hiou": 33.3}))
    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(WORLD_PROMPTS, run / "prompts.safetensors")
    assert main(["push", str(run), "--repo", "org/world-prompts", "--metrics", str(tmp_path / "metrics.json"),
                 "--private"]) == 0
    assert staged["created"] == staged["repo"] == "org/world-prompts" and staged["private"] is True
    assert staged["exist_ok"] is True and staged["message"] == "Upload with mvpseg push"
    assert staged["files"] == ["README.md", "config.json", "prompts.safetensors"]
    assert "| 42.0 | - | - | 33.3 | - |" in str(staged["card"])
    # --to writes the same files without uploading, and the folder loads like a Hub id
    assert main(["push", str(run), "--to", str(tmp_path / "out"), "--metrics", str(tmp_path / "metrics.json")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == staged["files"]
    assert resolve(tmp_path / "out", "prompts") == tmp_path / "out" / "prompts.safetensors"


def test_corrupt_or_partial_checkpoints_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(WORLD_PROMPTS.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="not an mvpseg"):
        publish.save_pretrained(truncated, tmp_path / "never")
    assert not (tmp_path / "never").exists()  # nothing written
    tensors = load_file(str(WORLD_PROMPTS))
    from safetensors import safe_open

    with safe_open(str(WORLD_PROMPTS), framework="pt") as handle:
        header = handle.metadata()
    partial = tmp_path / "partial"
    partial.mkdir()
    save_file({k: v for k, v in tensors.items() if k != "head.log_tau2"}, partial / "prompts.safetensors",
              metadata=header)
    with pytest.raises(CheckpointError, match=r"does not match the model .*missing: head.log_tau2"):
        mvpseg.Segmenter.from_pretrained(prompts=partial, device="cpu")
    wrong = dict(tensors, **{"prompts.contexts": torch.zeros(2, 1, 1)})
    save_file(wrong, partial / "prompts.safetensors", metadata=header)
    with pytest.raises(CheckpointError, match="does not match the model"):
        mvpseg.Segmenter.from_pretrained(prompts=partial / "prompts.safetensors", device="cpu")


@pytest.mark.parametrize(("code", "source", "line"), [
    ("RepoNotFound", "org/typo", r"^no model org/typo on the Hugging Face Hub: check the name"),
    ("RevisionNotFound", "org/world-prompts@v9", r"^org/world-prompts has no revision 'v9' on the Hugging Face Hub"),
])
def test_online_missing_model_and_revision_lines(code: str, source: str, line: str, world_cache: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")

    def hub_says_no(self, request, *args, **kwargs):  # noqa: ANN001
        return httpx2.Response(404, headers={"X-Error-Code": code, "X-Error-Message": "not found"}, request=request)

    monkeypatch.setattr(httpx2.Client, "send", hub_says_no)
    with pytest.raises(HubError, match=line) as error:
        resolve(source, "prompts")
    assert "\n" not in str(error.value)


def test_a_saved_segmenter_loads_from_its_folder(tmp_path: Path) -> None:
    config = mvpseg.InferenceConfig(short_side=None, mode="whole", precision="fp32")
    seg = mvpseg.Segmenter.from_pretrained(prompts=WORLD_PROMPTS, device="cpu", config=config)
    folder = publish.save_pretrained(seg, tmp_path / "saved")
    again = mvpseg.Segmenter.from_pretrained(prompts=folder, device="cpu", config=config)
    image = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    np.testing.assert_allclose(again.predict(image, NAMES, return_scores=True).scores,
                               seg.predict(image, NAMES, return_scores=True).scores, atol=1e-6)
    assert json.loads((folder / "config.json").read_text())["kind"] == "prompts"


def test_pseudo_labels_from_a_hub_id_or_a_folder_fingerprint_the_resolved_file(
        world_cache: Path, no_network: list[str], tmp_path: Path) -> None:
    from fakedata import write_custom

    from mvpseg.data import build_dataset
    from mvpseg.transfer.pseudo import check_pseudo_labels, prompts_fingerprint

    folder = publish.save_pretrained(WORLD_PROMPTS, tmp_path / "folder")
    digest = prompts_fingerprint(WORLD_PROMPTS)
    assert prompts_fingerprint("org/world-prompts") == prompts_fingerprint(folder) == digest
    root = write_custom(tmp_path / "data", num_train=2, size=(96, 128))
    assert main(["pseudo-label", "--dataset", "custom", "--data-root", str(root), "--prompts", "org/world-prompts",
                 "--out", str(tmp_path / "labels"), "--quiet"]) == 0
    dataset = build_dataset("custom", root, "train")
    for source in ("org/world-prompts", str(folder), str(WORLD_PROMPTS)):  # what transfer --prompts may be given
        check_pseudo_labels(tmp_path / "labels", dataset, source, use_gpr=False, label_void=False, confidence=0.0)
    assert no_network == []


def test_huggingface_hub_is_a_declared_dependency_with_a_floor() -> None:
    import re

    import tomllib

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    declared = [entry for entry in project["dependencies"] if re.match(r"huggingface[-_]hub\b", entry)]
    assert len(declared) == 1 and ">=" in declared[0]
