"""``mvpseg segment`` with inputs and vocabularies as users write them: folders, patterns, synonyms, the
background threshold, and a folder split over two gloo processes."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image
from safetensors.torch import save_file

import mvpseg
from mvpseg.cli import main
from mvpseg.inputs import collect_images, shard


@pytest.fixture()
def weights(tiny_vit: mvpseg.ClipBundle, tmp_path: Path) -> Path:
    path = tmp_path / "tiny-vit.safetensors"
    save_file(dict(tiny_vit.model.state_dict()), path)
    return path


def _photo(path: Path, size: tuple[int, int] = (40, 56), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


def _common(weights: Path, out: Path) -> list[str]:
    return ["--clip", "test-tiny-vit", "--clip-weights", str(weights), "--out", str(out), "--short-side", "64",
            "--mode", "whole", "--device", "cpu"]


def _outputs(out: Path) -> list[str]:
    return sorted(path.relative_to(out).as_posix() for path in out.rglob("*.json"))


def _folder(root: Path) -> Path:
    """photos/{a.jpg, b.png, notes.txt, .DS_Store, sub/c.png, sub/a.png, sub/readme.md}"""
    photos = root / "photos"
    _photo(photos / "a.jpg")
    _photo(photos / "b.png", seed=1)
    _photo(photos / "sub" / "c.png", seed=2)
    _photo(photos / "sub" / "a.png", seed=3)
    (photos / "notes.txt").write_text("not an image")
    (photos / ".DS_Store").write_bytes(b"\0\0")
    (photos / "sub" / "readme.md").write_text("# not an image")
    return photos


def test_a_folder_gives_its_images_and_counts_the_rest(weights: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    photos = _folder(tmp_path)
    out = tmp_path / "out"
    assert main(["segment", str(photos), "--classes", "cat,dog", *_common(weights, out)]) == 0
    assert _outputs(out) == ["a.json", "b.json"]
    err = capsys.readouterr().err
    assert "skipped 2 files that are not images" in err and "segmented 2 of 2 images" in err
    deep = tmp_path / "deep"
    assert main(["segment", str(photos), "--recursive", "--classes", "cat,dog", *_common(weights, deep)]) == 0
    assert _outputs(deep) == ["a.json", "b.json", "sub/a.json", "sub/c.json"]  # the folder's layout, mirrored
    assert (deep / "sub" / "a.png").is_file() and (deep / "sub" / "a_overlay.png").is_file()
    assert "skipped 3 files that are not images" in capsys.readouterr().err
    assert json.loads((deep / "sub" / "a.json").read_text())["image"] == str(photos / "sub" / "a.png")


def test_patterns_and_same_names_in_two_folders(weights: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    photos = _folder(tmp_path)
    other = tmp_path / "other"
    _photo(other / "a.jpg", seed=4)
    out = tmp_path / "out"
    pattern = str(photos / "**" / "*.png")  # quoted on a shell: mvpseg expands it
    status = main(["segment", pattern, str(photos), str(other / "a.jpg"), "--classes", "cat,dog",
                   *_common(weights, out)])
    assert status == 0
    # Pattern matches: b, sub/a (-> a), sub/c; the folder: a (-> a-2), b (-> b-2); the file: a (-> a-3).
    assert _outputs(out) == ["a-2.json", "a-3.json", "a.json", "b-2.json", "b.json", "c.json"]
    assert json.loads((out / "a.json").read_text())["image"] == str(photos / "sub" / "a.png")
    assert json.loads((out / "a-3.json").read_text())["image"] == str(other / "a.jpg")
    capsys.readouterr()
    # A pattern matching nothing and an empty folder: one line each, exit 1, the rest still done.
    (tmp_path / "empty").mkdir()
    status = main(["segment", str(tmp_path / "*.gif"), str(tmp_path / "empty"), str(other), "--classes", "cat",
                   *_common(weights, tmp_path / "out2"), "--quiet"])
    assert status == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and "no image matches this pattern" in errors[0] and "no images in this folder" in errors[1]
    assert _outputs(tmp_path / "out2") == ["a.json"]


def test_collect_images_is_deterministic_and_shards_cover_every_image_once(tmp_path: Path) -> None:
    photos = _folder(tmp_path)
    first = collect_images([str(photos)], recursive=True)
    assert [item.name for item in first.images] == ["a", "b", "sub/a", "sub/c"] and first.skipped == 3
    assert collect_images([str(photos)], recursive=True) == first
    shares = [shard(first.images, rank, 3) for rank in range(3)]
    assert [item.name for item in shares[0]] == ["a", "sub/c"]
    assert sorted(item.name for share in shares for item in share) == sorted(item.name for item in first.images)


def test_synonyms_and_threshold_from_the_command_line(weights: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    image = _photo(tmp_path / "a.png", (48, 64))
    out = tmp_path / "out"
    assert main(["segment", str(image), "--classes", "tv monitor|television, cat", "--background", "background|sky",
                 *_common(weights, out)]) == 0
    summary = json.loads((out / "a.json").read_text())
    assert summary["class_names"] == ["background", "tv monitor", "cat"]
    segmenter = mvpseg.Segmenter.from_pretrained(clip="test-tiny-vit", pretrained=str(weights), device="cpu",
                                                 config=mvpseg.InferenceConfig(short_side=64, mode="whole"))
    expected = segmenter.predict(image, [("tv monitor", "television"), "cat"], background=("background", "sky"))
    np.testing.assert_array_equal(np.asarray(Image.open(out / "a.png")), expected.labels)
    assert main(["segment", str(image), "--classes", "cat,dog", "--background", "bg", "--background-threshold", "1",
                 *_common(weights, tmp_path / "all")]) == 0
    assert (np.asarray(Image.open(tmp_path / "all" / "a.png")) == 0).all()  # every score is below 1
    capsys.readouterr()
    for extra, message in ((["--background-threshold", "0.5"], "needs a background class"),
                           (["--background", "bg", "--background-threshold", "2"], "between 0 and 1"),
                           (["--background", "bg,sky"], "one class"),
                           (["--background", "cat"], "duplicate class names: cat")):
        assert main(["segment", str(image), "--classes", "cat,dog", *extra, *_common(weights, tmp_path / "x")]) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and message in error


# --- two processes -----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, argv: list[str], config_dir: str, port: int, log_dir: str) -> None:
    from mvpseg import outputs

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    open_clip.add_model_config(config_dir)
    original = outputs.write_text
    written: list[str] = []

    def recording(path, text):  # every summary this process writes
        written.append(str(path))
        return original(path, text)

    outputs.write_text = recording
    status = main(argv)
    Path(log_dir, f"rank{rank}.json").write_text(json.dumps({"status": status, "written": written}))


def test_torchrun_splits_a_folder_over_the_processes(weights: Path, tmp_path: Path, tiny_configs: Path) -> None:
    photos = _folder(tmp_path)
    _photo(photos / "sub" / "broken.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "out"
    argv = ["segment", str(photos), "--recursive", "--classes", "cat,dog", *_common(weights, out), "--quiet"]
    # fork: a spawned process would spend most of this test re-importing torch and open_clip
    mp.start_processes(_worker, args=(argv, str(tiny_configs), _free_port(), str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    written = [sorted(Path(path).relative_to(out).as_posix() for path in report["written"]) for report in reports]
    # Sorted inputs a, b, sub/a, sub/broken, sub/c: rank 0 takes a, sub/a, sub/c; rank 1 b and the broken one.
    assert written == [["a.json", "sub/a.json", "sub/c.json"], ["b.json"]]
    assert _outputs(out) == ["a.json", "b.json", "sub/a.json", "sub/c.json"]
    assert [report["status"] for report in reports] == [1, 1]  # the broken image fails the run on every rank


def test_non_images_are_counted_over_every_folder_and_pattern(weights: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    photos = _folder(tmp_path)  # notes.txt, .DS_Store; sub/readme.md
    other = tmp_path / "other"
    _photo(other / "x.png")
    (other / "table.csv").write_text("1,2\n")
    pattern = str(photos / "**" / "*")  # matches notes.txt and sub/readme.md (not the hidden file)
    arguments = [str(photos), str(other), pattern]
    found = collect_images(arguments)
    assert found.skipped == 2 + 1 + 2 and len(found.images) == 2 + 1 + 4
    assert main(["segment", *arguments, "--classes", "cat,dog", *_common(weights, tmp_path / "out")]) == 0
    assert "skipped 5 files that are not images" in capsys.readouterr().err
