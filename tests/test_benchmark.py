"""`mvpseg benchmark` end to end and offline: a parts world written in ADE20K's official layout, the shipped tiny ViT
CLIP, two ViT modes. The numbers must be `mvpseg eval`'s, a killed and resumed run the uninterrupted run, two
processes one, and what cannot run one line each while the rest runs."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from mvpseg.benchmark import BenchmarkSettings, Method, protocol_name, run_benchmark
from mvpseg.benchmark_tables import parse_benchmarks, table_groups
from mvpseg.cli import main
from mvpseg.config import ModelSource, to_dict
from mvpseg.protocols import (
    CROSS_DATASET_BENCHMARKS,
    PROTOCOL_NAMES,
    TRAINING_FREE_BENCHMARKS,
    get_protocol,
    protocol_benchmarks,
)
from mvpseg.world.layout import write_ade20k_world

CLIP = "mvpseg-tiny-parts-vit"
SIZE = ["--short-side", "96", "--mode", "whole"]  # the world's 96-px images at once: fast, and still 36 patches
#: What differs between two runs that made the same numbers: when, how fast, on how many processes.
TIMING = ("seconds", "images_per_second", "finished", "world_size")


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ade20k_world(tmp_path_factory.mktemp("data"), num_images=6, image_size=96)


def _argv(world: Path, out: Path, *extra: str, modes: str = "maskclip,naclip", benchmarks: str = "ade20k") -> list[str]:
    return ["benchmark", "--benchmarks", benchmarks, "--data-root", str(world), "--clip", CLIP, "--vit-modes", modes,
            "--out", str(out), "--quiet", "--device", "cpu", *SIZE, *extra]


@pytest.fixture(scope="module")
def uninterrupted(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    assert main(_argv(world, out)) == 0
    return out


def _cells(out: Path) -> dict[str, Any]:
    """results.json less what says when and how fast."""
    results = json.loads((out / "results.json").read_text())
    for row in results["cells"].values():
        for cell in row.values():
            for key in TIMING:
                cell.pop(key, None)
    return results


def test_the_benchmark_gives_mvpseg_evals_numbers(world: Path, uninterrupted: Path, tmp_path: Path) -> None:
    cell = _cells(uninterrupted)["cells"]["naclip"]["ade20k"]
    assert main(["eval", "--dataset", "ade20k", "--data-root", str(world), "--clip", CLIP, "--vit-mode", "naclip",
                 "--out", str(tmp_path), "--quiet", "--device", "cpu", *SIZE]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert cell["status"] == "done" and cell["num_images"] == metrics["num_images"] == 6
    assert cell["miou"] == metrics["miou"] and cell["per_class"] == metrics["per_class"]  # exactly: the same matrix
    assert cell["pixel_acc"] == metrics["pixel_acc"]
    assert cell["inference"] == metrics["setup"]["inference"]
    # What made the cell is in it: dataset, split and counts, the protocol's record, model and source.
    assert (cell["dataset"], cell["split"], cell["split_images"], cell["official_images"]) == ("ade20k", "val", 6, 2000)
    assert cell["protocol"]["name"] == "mvpseg" and cell["protocol"]["benchmark"] == "ade20k"
    assert cell["model"]["config"]["vit_mode"] == "naclip" and cell["source"]["clip"] == CLIP
    assert cell["overrides"] == {"short_side": 96, "mode": "whole"} and cell["mvpseg_version"]
    maskclip = _cells(uninterrupted)["cells"]["maskclip"]["ade20k"]
    assert maskclip["miou"] != cell["miou"] and maskclip["fingerprint"] != cell["fingerprint"]
    table = (uninterrupted / "results.md").read_text()
    assert f"| naclip | {cell['miou']:.1f} | {cell['miou']:.1f} | mvpseg |" in table
    assert "- naclip / ade20k: ade20k val, 6 images; the official val has 2000 (a partial or another copy); " \
           "protocol mvpseg (the dataset's class names)" in table


class Killed(Exception):
    """What the test's callback raises: the run stops there, as a killed process would."""


def _settings(world: Path, out: Path) -> BenchmarkSettings:
    """The uninterrupted run's settings, as the command line makes them, with a checkpoint every 2 images."""
    methods = [Method(mode, ModelSource(clip=CLIP, vit_mode=mode)) for mode in ("maskclip", "naclip")]
    return BenchmarkSettings(benchmarks=["ade20k"], methods=methods, out=out, data_root=world,
                             overrides={"short_side": 96, "mode": "whole"}, checkpoint_every=2,
                             tables=table_groups("ade20k", ["ade20k"]))


def test_a_killed_run_continues_where_it_was(world: Path, uninterrupted: Path, tmp_path: Path) -> None:
    events: list[dict[str, Any]] = []

    def kill_at_the_third_naclip_image(event: dict[str, Any]) -> None:
        events.append(event)
        if event["event"] == "image" and event["method"] == "naclip" and event["index"] == 2:
            raise Killed

    with pytest.raises(Killed):
        run_benchmark(_settings(world, tmp_path), device="cpu", progress=False,
                      callback=kill_at_the_third_naclip_image, log=None)
    partial = tmp_path / "partial" / "ade20k--naclip.safetensors"
    assert partial.is_file()  # images 0 and 1 of naclip, checkpointed; image 2 was lost with the kill
    assert [e["images"] for e in events if e["event"] == "checkpoint" and e["method"] == "naclip"] == [2]
    stopped = json.loads((tmp_path / "results.json").read_text())
    assert stopped["cells"]["maskclip"]["ade20k"]["status"] == "done" and "naclip" not in stopped["cells"]
    assert "| naclip | - | - | - |" in (tmp_path / "results.md").read_text()

    events.clear()
    run_benchmark(_settings(world, tmp_path), device="cpu", progress=False, callback=events.append, log=None)
    kinds = [(e["event"], e["method"]) for e in events if e["event"] != "image"]
    assert ("skip", "maskclip") in kinds and ("start", "maskclip") not in kinds  # the finished cell is not redone
    assert {"event": "resume", "method": "naclip", "benchmark": "ade20k", "images": 2} in events
    assert [e["index"] for e in events if e["event"] == "image"] == [2, 3, 4, 5]  # naclip's images from the third on
    assert not partial.exists()
    assert _cells(tmp_path)["cells"] == _cells(uninterrupted)["cells"]
    assert (tmp_path / "results.md").read_text() == (uninterrupted / "results.md").read_text()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun_worker(rank: int, argv: list[str], port: int, log_dir: str) -> None:
    """One process of `torchrun --nproc_per_node 2 -m mvpseg benchmark ...` (gloo, CPU)."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    status = main(argv)
    Path(log_dir, f"rank{rank}").write_text(str(status))
    sys.exit(status)


def test_two_processes_give_the_numbers_of_one(world: Path, uninterrupted: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    # torch.multiprocessing's machinery with fork, as tests/test_evaluate.py: a fresh interpreter would spend most
    # of the test importing torch again. A checkpoint every 3 images: each rank segments alternate images of a block.
    mp.start_processes(_torchrun_worker, args=(_argv(world, out, "--checkpoint-every", "3"), _free_port(),
                                               str(tmp_path)), nprocs=2, join=True, start_method="fork")
    assert [(tmp_path / f"rank{rank}").read_text() for rank in range(2)] == ["0", "0"]
    two = _cells(out)
    assert two["cells"] == _cells(uninterrupted)["cells"]
    assert json.loads((out / "results.json").read_text())["cells"]["naclip"]["ade20k"]["world_size"] == 2
    assert (out / "results.md").read_text() == (uninterrupted / "results.md").read_text()


def test_a_missing_dataset_is_one_line_and_the_rest_runs(world: Path, uninterrupted: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    shutil.copytree(uninterrupted, out)
    before = _cells(out)["cells"]
    # naclip on ade20k again but on 4 images: other settings, so redone; cityscapes is not there.
    status = main(_argv(world, out, "--limit", "4", modes="naclip", benchmarks="ade20k,cityscapes"))
    assert status == 1  # a requested cell is missing
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "cityscapes" in line]
    assert len(lines) == 1 and lines[0].startswith("mvpseg: cityscapes: skipped: no cityscapes/ in ")
    assert f"mvpseg prepare cityscapes {world}" in lines[0]
    results = _cells(out)
    naclip = results["cells"]["naclip"]
    assert naclip["ade20k"]["status"] == "done" and naclip["ade20k"]["num_images"] == 4 and naclip["ade20k"]["limit"] == 4
    assert naclip["ade20k"]["fingerprint"] != before["naclip"]["ade20k"]["fingerprint"]
    assert naclip["cityscapes"]["status"] == "missing" and "no cityscapes/" in naclip["cityscapes"]["reason"]
    assert results["cells"]["maskclip"] == before["maskclip"]  # another row's cells are kept as they were
    table = (out / "results.md").read_text()
    miou = naclip["ade20k"]["miou"]
    assert f"| naclip | {miou:.1f} | - | {miou:.1f}* | mvpseg |" in table
    assert "- naclip / cityscapes: no cityscapes/ in" in table
    assert "naclip / ade20k: ade20k val, 4 of 6 images (limit 4)" in table
    assert results["incomplete"] == ["naclip / cityscapes"]


def test_a_bad_label_fails_its_cell_in_one_line(world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    shutil.copytree(world, data)
    label = data / "ADEChallengeData2016" / "annotations" / "validation" / "ADE_val_00000001.png"
    Image.open(label).resize((50, 40)).save(label)
    out = tmp_path / "out"
    assert main(_argv(data, out, modes="naclip")) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mvpseg:")]
    assert len(lines) == 1 and "naclip / ade20k: failed: rank 0" not in lines[0]
    assert "failed: label" in lines[0] and "is 50x40 (WxH) but its image" in lines[0]
    cell = json.loads((out / "results.json").read_text())["cells"]["naclip"]["ade20k"]
    assert cell["status"] == "failed" and "50x40" in cell["reason"]
    assert "- naclip / ade20k: label" in (out / "results.md").read_text()


def test_an_unknown_benchmark_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["benchmark", "--benchmarks", "voc21,imagenet", "--data-root", str(tmp_path), "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "unknown benchmark 'imagenet'" in error and error.startswith("mvpseg: error:")
    assert not out.exists()
    assert main(["benchmark", "--benchmarks", "ade20k", "--root", "ade20k", "--out", str(out)]) == 2
    assert "give NAME=DIR" in capsys.readouterr().err


def test_benchmark_names_tables_and_protocols() -> None:
    assert parse_benchmarks("all") == [*TRAINING_FREE_BENCHMARKS, "ade847", "pc459"]
    assert parse_benchmarks("cross-dataset") == list(CROSS_DATASET_BENCHMARKS)
    assert parse_benchmarks("ADE150, voc,context,coco_stuff,voc20") == ["ade20k", "voc20", "context59", "coco-stuff"]
    assert [title for title, _ in table_groups("all", [])] == ["Training-free (mIoU, %)", "Cross-dataset (mIoU, %)"]
    assert table_groups("voc21,ade20k", ["voc21", "ade20k"]) == [("mIoU, %", ["voc21", "ade20k"])]
    templates = Method("naclip", ModelSource(vit_mode="naclip"))
    prompts = Method("prompts:x", ModelSource(prompts="x.safetensors"))
    assert protocol_name("sclip", templates, "voc21") == "sclip"
    assert protocol_name("own", prompts, "voc21") == "mvpseg"
    assert protocol_name("own", Method("maskclip", ModelSource(vit_mode="maskclip")), "voc21") == "mvpseg"
    filled = [name for name in PROTOCOL_NAMES if _has_values(name, "voc21")]
    assert protocol_name("own", templates, "voc21") == ("naclip" if "naclip" in filled else "mvpseg")


def _has_values(name: str, benchmark: str) -> bool:
    try:
        return benchmark in protocol_benchmarks(name)
    except ValueError:
        return False


def test_help_imports_no_torch() -> None:
    code = ("import sys\nfrom mvpseg.cli import main\ntry:\n    main(['benchmark', '--help'])\nexcept SystemExit:\n"
            "    pass\nassert 'torch' not in sys.modules and 'numpy' not in sys.modules, sorted(sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    for flag in ("--benchmarks", "--data-root", "--root", "--protocol", "--vit-modes", "--prompts", "--student",
                 "--limit", "--checkpoint-every", "--short-side", "--stitch"):
        assert flag in result.stdout


def test_own_protocol_gives_each_mode_its_repositorys_settings(world: Path, tmp_path: Path) -> None:
    argv = ["benchmark", "--benchmarks", "ade20k", "--data-root", str(world), "--clip", CLIP, "--vit-modes",
            "naclip,maskclip", "--protocol", "own", "--limit", "1", "--out", str(tmp_path), "--quiet", "--device", "cpu"]
    if not _has_values("naclip", "ade20k"):
        pytest.skip("mvpseg.protocols has no NACLIP values yet")
    assert main(argv) == 0
    cells = json.loads((tmp_path / "results.json").read_text())["cells"]
    naclip, maskclip = cells["naclip"]["ade20k"], cells["maskclip"]["ade20k"]
    expected = protocol_name("own", Method("naclip", ModelSource(vit_mode="naclip")), "ade20k")
    assert naclip["protocol"]["name"] == expected == "naclip" and maskclip["protocol"]["name"] == "mvpseg"
    protocol = get_protocol("naclip", "ade20k")
    assert naclip["inference"] == to_dict(protocol.inference_config()) and naclip["overrides"] == {}
    assert naclip["protocol"]["class_file"] == protocol.class_file and naclip["model"]["config"]["vit_mode"] == "naclip"
    assert maskclip["protocol"]["class_file"] is None and maskclip["model"]["config"]["vit_mode"] == "maskclip"
    assert "| naclip | " in (tmp_path / "results.md").read_text() and f"protocol naclip ({protocol.class_file})" in \
        (tmp_path / "results.md").read_text()


def test_an_image_without_a_label_and_a_missing_split_file_cost_their_cells(
        world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A VOC image without its label fails VOC21 and a Context tree without its split file skips Context59, one line
    each naming the file; ADE20K's cell still runs and gives the uninterrupted run's numbers."""
    from tests.fakedata import write_context, write_voc

    data = tmp_path / "data"
    shutil.copytree(world, data)
    write_voc(data, num_val=2)
    voc = data / "VOCdevkit" / "VOC2012"
    missing = (voc / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[1]
    (voc / "SegmentationClass" / f"{missing}.png").unlink()
    write_context(data, num_val=2)
    for split_file in (data / "VOCdevkit" / "VOC2010").rglob("val.txt"):
        split_file.unlink()
    out = tmp_path / "out"
    assert main(_argv(data, out, modes="maskclip", benchmarks="voc21,context59,ade20k")) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mvpseg:")]
    assert len(lines) == 2
    assert any(line.startswith("mvpseg: voc21: failed: label not found") and missing in line for line in lines)
    assert any(line.startswith("mvpseg: context59: failed: split file not found") and "val.txt" in line
               for line in lines)
    cells = json.loads((out / "results.json").read_text())["cells"]["maskclip"]
    assert cells["voc21"]["status"] == cells["context59"]["status"] == "failed"
    assert cells["ade20k"]["status"] == "done"
    assert missing in (out / "results.md").read_text()


def test_a_prompts_row_gives_mvpseg_evals_numbers(world: Path, tmp_path: Path) -> None:
    """Learned prompts are a row like any mode (here untrained prompts on the tiny ViT, saved as training saves them),
    scored as `mvpseg eval --prompts` scores them."""
    import mvpseg
    from mvpseg.checkpoint import save_prompt_checkpoint
    from mvpseg.config import MVPSegConfig

    clip = mvpseg.load_clip(CLIP, pretrained="auto")
    model = mvpseg.build_mvpseg(clip, MVPSegConfig(num_prompts=2, vit_mode="naclip"),
                                generator=torch.Generator().manual_seed(0))
    prompts = save_prompt_checkpoint(tmp_path / "prompts.safetensors", model)
    out = tmp_path / "out"
    assert main(["benchmark", "--benchmarks", "ade20k", "--data-root", str(world), "--prompts", f"mine={prompts}",
                 "--out", str(out), "--quiet", "--device", "cpu", *SIZE]) == 0
    cell = _cells(out)["cells"]["mine"]["ade20k"]
    assert main(["eval", "--dataset", "ade20k", "--data-root", str(world), "--prompts", str(prompts),
                 "--out", str(tmp_path / "eval"), "--quiet", "--device", "cpu", *SIZE]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert cell["status"] == "done" and cell["model"]["kind"] == "prompts"
    assert cell["miou"] == metrics["miou"] and cell["per_class"] == metrics["per_class"]
    assert "| mine |" in (out / "results.md").read_text()
