"""mvpseg demo end to end in a reduced size (random tiny-CLIP weights: the numbers mean nothing here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import mvpseg
from mvpseg.cli import main
from mvpseg.clip import TINY_CLIP_NAME


@pytest.fixture(scope="module")
def random_tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    clip = mvpseg.load_clip(TINY_CLIP_NAME, pretrained=None)
    path = tmp_path_factory.mktemp("tiny") / "random-tiny.safetensors"
    save_file({k: v.contiguous() for k, v in clip.model.state_dict().items()}, path)
    return path


def test_demo_writes_the_ablation_table_and_pictures(random_tiny_weights: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    status = main(["demo", "--out", str(out), "--num-train", "24", "--num-val", "6", "--iters", "3",
                   "--seeds", "2", "--student-iters", "2", "--student-self-train-from", "1", "--student-batch-size", "4",
                   "--student-head-channels", "8", "--clip-weights", str(random_tiny_weights), "--quiet"])
    assert status == 0
    rows = json.loads((out / "results.json").read_text())
    assert [row["name"] for row in rows] == ["templates", "1-prompt", "k-prompts", "k-prompts+ocloss", "mvp-seg",
                                             "mvp-seg+"]
    for row in rows:
        assert {"name", "miou_seen", "miou_unseen", "hiou"} <= set(row)
        # a learned row is the mean of its seeds' figures; the templates and the student are one run each
        assert [run["seed"] for run in row["seeds"]] == ([0] if row["name"] in ("templates", "mvp-seg+") else [0, 1])
        for key in ("miou_seen", "miou_unseen", "hiou"):
            values = [run[key] for run in row["seeds"] if run[key] is not None]
            assert row[key] == (pytest.approx(sum(values) / len(values)) if values else None)
    table = (out / "results.md").read_text()
    assert table.count("\n|") == 7 and "3 prompts + OCLoss + GPR (MVP-SEG)" in table and "MVP-SEG+" in table
    assert "| MaskCLIP templates (no training) |" in capsys.readouterr().out
    assert len(list(out.glob("overlay_*.png"))) == 4 and len(list(out.glob("prompt_maps_*.png"))) == 1
    from PIL import Image

    assert Image.open(out / "overlay_0.png").width > 3 * 128  # MVP-SEG | MVP-SEG+ | ground truth
    # the student learned from the teacher's labels, written once for the training images
    assert len(list((out / "pseudo-labels" / "seed-0").glob("train_*.png"))) == 24
    assert (out / "runs" / "mvp-seg+" / "seed-0" / "student.safetensors").is_file()
    # learned rows trained from one shared feature cache per seed; each seed of each row wrote its prompts
    assert all((out / "feature-cache" / f"seed-{seed}" / "meta.json").is_file() for seed in (0, 1))
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["1-prompt", "k-prompts", "k-prompts+ocloss", "mvp-seg",
                                                                "mvp-seg+"]
    assert all((out / "runs" / "mvp-seg" / f"seed-{seed}" / "prompts.safetensors").is_file() for seed in (0, 1))


def test_demo_is_deterministic(random_tiny_weights: Path, tmp_path: Path) -> None:
    results = []
    for run in ("a", "b"):
        main(["demo", "--out", str(tmp_path / run), "--num-train", "16", "--num-val", "4", "--iters", "2",
              "--seeds", "1", "--student-iters", "2", "--student-batch-size", "4", "--student-head-channels", "8",
              "--clip-weights", str(random_tiny_weights), "--quiet"])
        results.append(json.loads((tmp_path / run / "results.json").read_text()))
    strip = [[{k: v for k, v in row.items() if k != "seconds"} for row in rows] for rows in results]
    assert strip[0] == strip[1]


@pytest.mark.slow
def test_full_demo_with_the_shipped_tiny_clip(tmp_path: Path) -> None:
    """The README's demo (about 7 minutes on 2 CPU cores): full MVP-SEG beats the templates on unseen classes
    (+5.1 mIoU(U) measured; 4 here leaves room for another CPU's rounding), unseen things included."""
    assert main(["demo", "--out", str(tmp_path), "--quiet"]) == 0
    rows = {row["name"]: row for row in json.loads((tmp_path / "results.json").read_text())}
    assert rows["mvp-seg"]["miou_unseen"] > rows["templates"]["miou_unseen"] + 4.0
    assert rows["mvp-seg"]["hiou"] > rows["templates"]["hiou"] + 2.0
    for thing in ("zigzag", "rings", "crosses"):
        assert rows["mvp-seg"]["per_class"][thing] > 30.0
    # MVP-SEG+: the student taught by MVP-SEG's prompts (+18.4 hIoU and +18.7 mIoU(U) measured on seed 0)
    assert rows["mvp-seg+"]["hiou"] >= rows["mvp-seg"]["hiou"] + 15.0
    assert rows["mvp-seg+"]["miou_unseen"] >= rows["mvp-seg"]["miou_unseen"] + 12.0
