"""The evaluation loop, `mvpseg eval` and `mvpseg prepare`, on tiny generated datasets and tiny random CLIPs."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.multiprocessing as mp
from fakedata import (
    STUFFTHINGMAPS_STAMP_TRAIN_IDS,
    write_context,
    write_custom,
    write_stuffthingmaps,
    write_voc,
)
from PIL import Image
from safetensors.torch import save_file

import mvpseg
from mvpseg.checkpoint import save_prompt_checkpoint
from mvpseg.cli import main
from mvpseg.data import build_dataset
from mvpseg.evaluate import evaluate, inference_preset, write_metrics

TINY = {"short_side": 64, "crop_size": 64, "stride": 32}  # two windows per 48x64 image
CLI_TINY = ["--short-side", "64", "--crop-size", "64", "--stride", "32", "--quiet"]
METRIC_KEYS = {"miou", "miou_seen", "miou_unseen", "hiou", "pixel_acc", "per_class", "num_images"}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    # The tiny CLIP's convolutions are far faster on one thread, above all on a busy 2-core machine
    # where OpenMP workers spin against each other.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def weights(tiny_rn: mvpseg.ClipBundle, tmp_path: Path) -> Path:
    path = tmp_path / "tiny-rn.safetensors"
    save_file(dict(tiny_rn.model.state_dict()), path)
    return path


@pytest.fixture()
def prompts(tiny_rn: mvpseg.ClipBundle, tmp_path: Path) -> Path:
    model = mvpseg.build_mvpseg(tiny_rn, mvpseg.MVPSegConfig(num_context=2),
                                generator=torch.Generator().manual_seed(0))
    return save_prompt_checkpoint(tmp_path / "prompts.safetensors", model)


def _segmenter(clip: mvpseg.ClipBundle, prompts: Path | None = None) -> mvpseg.Segmenter:
    model = mvpseg.load_mvpseg(prompts, clip) if prompts is not None else mvpseg.build_mvpseg(clip, None)
    return mvpseg.Segmenter(model, config=mvpseg.InferenceConfig(**TINY), device="cpu")


def _expected_metrics(segmenter: mvpseg.Segmenter, dataset: mvpseg.data.SegmentationDataset,
                      names: Sequence[str], unseen: Sequence[int]) -> dict:
    """The metrics computed here with NumPy, from the segmenter's own predictions, without ConfusionMatrix."""
    num_classes = len(names)
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    for index in range(len(dataset)):
        image, label = dataset.load(index)
        predicted = segmenter.predict(image, list(names)).labels
        assert predicted.shape == label.shape
        keep = label != 255
        matrix += np.bincount(label[keep] * num_classes + predicted[keep],
                              minlength=num_classes**2).reshape(num_classes, num_classes)
    iou = {}
    for c, name in enumerate(names):
        union = matrix[c, :].sum() + matrix[:, c].sum() - matrix[c, c]
        iou[name] = 100.0 * matrix[c, c] / union if union else None

    def mean(indices: Sequence[int]) -> float | None:
        values = [iou[names[c]] for c in indices if iou[names[c]] is not None]
        return sum(values) / len(values) if values else None

    seen = [c for c in range(num_classes) if c not in unseen]
    s, u = mean(seen), mean(unseen)
    return {
        "miou": mean(range(num_classes)),
        "miou_seen": s,
        "miou_unseen": u,
        "hiou": (2 * s * u / (s + u) if s + u else 0.0) if s is not None and u is not None else None,
        "pixel_acc": 100.0 * np.trace(matrix) / matrix.sum(),
        "per_class": iou,
        "num_images": len(dataset),
    }


def _assert_metrics_equal(actual: dict, expected: dict) -> None:
    assert set(actual) == set(expected)
    for key, value in expected.items():
        if key == "per_class":
            assert list(actual[key]) == list(value)
            for name, iou in value.items():
                assert actual[key][name] == (pytest.approx(iou) if iou is not None else None), name
        else:
            assert actual[key] == (pytest.approx(value) if value is not None else None), key


# --- evaluate ------------------------------------------------------------------------------------


def test_evaluate_equals_a_confusion_matrix_of_the_segmenters_predictions(
    tiny_rn: mvpseg.ClipBundle, prompts: Path, tmp_path: Path
) -> None:
    dataset = build_dataset("custom", write_custom(tmp_path / "data", num_val=3), "val")
    assert dataset.info.unseen_names == ("tree",)
    segmenter = _segmenter(tiny_rn, prompts)
    names = list(dataset.info.class_names)

    metrics = evaluate(segmenter, dataset, progress=False)
    expected = _expected_metrics(segmenter, dataset, names, unseen=[3])
    _assert_metrics_equal(metrics, expected)
    assert metrics["num_images"] == 3
    assert any(v for v in metrics["per_class"].values()), "a test of all-zero IoUs could not fail"

    # Another unseen split (by name or by index) regroups the same IoUs.
    regrouped = evaluate(segmenter, dataset, unseen=["sky", "red car"], progress=False)
    _assert_metrics_equal(regrouped, _expected_metrics(segmenter, dataset, names, unseen=[0, 2]))
    assert evaluate(segmenter, dataset, unseen=[0, 2], progress=False) == regrouped
    assert regrouped["per_class"] == metrics["per_class"] and regrouped["miou"] == metrics["miou"]

    limited = evaluate(segmenter, dataset, limit=1, progress=False)
    assert limited["num_images"] == 1


def test_bad_vocabulary_and_unseen_lists_fail_before_any_image(tiny_rn: mvpseg.ClipBundle, tmp_path: Path) -> None:
    dataset = build_dataset("custom", write_custom(tmp_path / "data", num_val=1), "val")
    dataset.image_paths = [tmp_path / "missing.png"]  # reading an image would raise another error
    segmenter = _segmenter(tiny_rn)
    with pytest.raises(ValueError, match="3 class names for a dataset whose labels have 4 classes"):
        evaluate(segmenter, dataset, class_names=["a", "b", "c"], progress=False)
    with pytest.raises(ValueError, match="not among the class names"):
        evaluate(segmenter, dataset, unseen=["dog"], progress=False)
    with pytest.raises(ValueError, match="outside 0..3"):
        evaluate(segmenter, dataset, unseen=[4], progress=False)
    with pytest.raises(ValueError, match="limit"):
        evaluate(segmenter, dataset, limit=0, progress=False)


def test_cross_dataset_vocabulary(tiny_rn: mvpseg.ClipBundle, prompts: Path, tmp_path: Path) -> None:
    # The same prompts on two datasets' label spaces, and on a vocabulary given at run time.
    segmenter = _segmenter(tiny_rn, prompts)
    write_voc(tmp_path / "voc", num_val=2)
    voc = build_dataset("voc", tmp_path / "voc", "val")
    metrics = evaluate(segmenter, voc, progress=False)
    _assert_metrics_equal(metrics, _expected_metrics(segmenter, voc, voc.info.class_names, voc.info.unseen))
    assert list(metrics["per_class"]) == list(voc.info.class_names)

    custom = build_dataset("custom", write_custom(tmp_path / "custom", num_val=2), "val")
    names = ["blue sky", "green grass", "car", "oak tree"]
    metrics = evaluate(segmenter, custom, class_names=names, progress=False)
    _assert_metrics_equal(metrics, _expected_metrics(segmenter, custom, names, unseen=[3]))
    assert tuple(names) in segmenter._text_cache  # the text tower saw the new names


def test_presets_and_write_metrics(tmp_path: Path) -> None:
    assert inference_preset("context").short_side == 520
    assert inference_preset("voc").short_side == inference_preset("coco_stuff").short_side == 512
    preset = inference_preset("voc", mode="whole")
    assert (preset.mode, preset.crop_size, preset.stride) == ("whole", 512, 426)
    metrics = {"miou": 1.5, "miou_unseen": None, "per_class": {"a": 1.5}, "num_images": 2}
    path = write_metrics(tmp_path / "out", metrics, extra={"dataset": "voc", "root": tmp_path})
    assert path == tmp_path / "out" / "metrics.json"
    written = json.loads(path.read_text())
    assert written == {**metrics, "setup": {"dataset": "voc", "root": str(tmp_path)}}
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]  # no temporary file left


# --- two processes -----------------------------------------------------------------------------------


def _eval_worker(rank: int, world_size: int, rendezvous: str, config_dir: str, weights: str, prompts: str,
                 data_root: str, out_dir: str) -> None:
    from mvpseg import distributed

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    open_clip.add_model_config(config_dir)
    got_rank, got_world, device = distributed.init_distributed("cpu", init_method=f"file://{rendezvous}",
                                                               timeout_s=120)
    try:
        segmenter = mvpseg.Segmenter.from_pretrained(clip="test-tiny-rn", pretrained=weights, prompts=prompts,
                                                     device=device, config=mvpseg.InferenceConfig(**TINY))
        metrics = evaluate(segmenter, build_dataset("custom", data_root, "val"), progress=False)
        parameter = torch.nn.Parameter(torch.zeros(3))
        parameter.grad = torch.full((3,), float(rank + 1))
        distributed.average_gradients([parameter])
        distributed.barrier()
        report = {"rank": got_rank, "world": got_world, "main": distributed.is_main_process(),
                  "metrics": metrics, "grad": parameter.grad.tolist()}
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(report))
    finally:
        distributed.cleanup()


def test_two_gloo_processes_give_the_metrics_of_one(tiny_configs: Path, weights: Path, prompts: Path,
                                                    tmp_path: Path) -> None:
    data_root = write_custom(tmp_path / "data", num_val=3)  # 3 images: ranks take 2 and 1
    segmenter = mvpseg.Segmenter.from_pretrained(clip="test-tiny-rn", pretrained=weights, prompts=prompts,
                                                 device="cpu", config=mvpseg.InferenceConfig(**TINY))
    alone = evaluate(segmenter, build_dataset("custom", data_root, "val"), progress=False)
    # torch.multiprocessing's spawn machinery with fork: a fresh interpreter would spend most of the
    # test importing torch and open_clip again.
    mp.start_processes(_eval_worker, nprocs=2, join=True, start_method="fork",
                       args=(2, str(tmp_path / "rendezvous"), str(tiny_configs), str(weights), str(prompts),
                             str(data_root), str(tmp_path)))
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert [(r["rank"], r["world"], r["main"]) for r in reports] == [(0, 2, True), (1, 2, False)]
    assert reports[0]["metrics"] == reports[1]["metrics"]
    assert reports[0]["metrics"]["num_images"] == 3
    _assert_metrics_equal(reports[0]["metrics"], alone)
    assert reports[0]["grad"] == reports[1]["grad"] == [1.5, 1.5, 1.5]


# --- the command line ----------------------------------------------------------------------------------


def test_eval_command_writes_metrics_json(weights: Path, tiny_rn: mvpseg.ClipBundle, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    write_voc(tmp_path / "voc", num_val=2)
    out = tmp_path / "out"
    status = main(["eval", "--dataset", "voc", "--data-root", str(tmp_path / "voc"), "--clip", "test-tiny-rn",
                   "--clip-weights", str(weights), "--out", str(out), *CLI_TINY])
    assert status == 0
    written = json.loads((out / "metrics.json").read_text())
    assert set(written) == METRIC_KEYS | {"setup"}
    setup = written["setup"]
    assert (setup["dataset"], setup["split"], setup["clip"]["name"]) == ("voc", "val", "test-tiny-rn")
    assert setup["prompts"].startswith("templates") and setup["inference"]["short_side"] == 64
    assert setup["unseen"] == ["potted plant", "sheep", "sofa", "train", "tv monitor"]
    # The command evaluates what evaluate() evaluates: MaskCLIP's templates at the given settings.
    expected = evaluate(_segmenter(tiny_rn), build_dataset("voc", tmp_path / "voc", "val"), progress=False)
    _assert_metrics_equal({k: v for k, v in written.items() if k != "setup"}, expected)

    printed = capsys.readouterr().out
    assert "voc val: 2 images" in printed and "mIoU(S)" in printed and "hIoU" in printed
    assert "pixel acc" in printed and "tv monitor" in printed and "(U)" in printed


def test_eval_command_cross_dataset_with_context_preset(weights: Path, prompts: Path, tmp_path: Path) -> None:
    # Prompts (as if) trained elsewhere, on Context's vocabulary; --short-side not given: Context's 520.
    write_context(tmp_path / "ctx", num_val=2)
    names = tmp_path / "names.txt"
    names.write_text("".join(f"thing {i}\n" for i in range(59)))
    unseen = tmp_path / "unseen.txt"
    unseen.write_text("thing 1\nthing 2\n")
    out = tmp_path / "out"
    status = main(["eval", "--dataset", "context", "--data-root", str(tmp_path / "ctx"), "--prompts", str(prompts),
                   "--clip-weights", str(weights), "--mode", "whole", "--limit", "1", "--class-names-file",
                   str(names), "--unseen-file", str(unseen), "--out", str(out), "--quiet"])
    assert status == 0
    written = json.loads((out / "metrics.json").read_text())
    assert written["num_images"] == 1 and len(written["per_class"]) == 59 and "thing 58" in written["per_class"]
    setup = written["setup"]
    assert setup["inference"]["short_side"] == 520 and setup["inference"]["mode"] == "whole"
    assert setup["clip"]["name"] == "test-tiny-rn"  # from the prompt checkpoint
    assert setup["unseen"] == ["thing 1", "thing 2"] and setup["limit"] == 1
    assert setup["prompts"] == str(prompts)


@pytest.mark.parametrize("layout, message", [
    ("missing", "dataset root not found"),
    ("empty", "no dataset found under"),
])
def test_eval_with_a_wrong_data_root_exits_2_with_one_line(tmp_path: Path, layout: str, message: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / layout
    if layout == "empty":
        root.mkdir()
    # No CLIP options: the data are checked before CLIP (RN50, which does not exist here) is loaded.
    status = main(["eval", "--dataset", "voc", "--data-root", str(root), "--out", str(tmp_path / "out")])
    assert status == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message in error and error.startswith("mvpseg: error:")
    assert not (tmp_path / "out").exists()


def test_eval_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_voc(tmp_path / "voc", num_val=1)
    base = ["eval", "--dataset", "voc", "--data-root", str(tmp_path / "voc"), "--out", str(tmp_path / "out")]
    assert main([*base, "--class-names-file", str(tmp_path / "nope.txt")]) == 2
    assert "--class-names-file: file not found" in capsys.readouterr().err
    assert main([*base, "--limit", "0"]) == 2
    assert "--limit must be a positive" in capsys.readouterr().err
    short = tmp_path / "short.txt"
    short.write_text("cat\ndog\n")
    assert main([*base, "--class-names-file", str(short)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "2 names, but voc has 20 classes" in error


def test_prepare_coco_stuff(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = write_stuffthingmaps(tmp_path, splits=("val2017",), num_images=2)
    assert main(["prepare", "coco-stuff", str(tmp_path), "--quiet"]) == 0  # only the val2017 that exists
    assert "wrote 2 label files" in capsys.readouterr().out
    converted = sorted((base / "annotations" / "val2017").glob("*_labelTrainIds.png"))
    assert len(converted) == 2
    row = np.asarray(Image.open(converted[0]))[0, : len(STUFFTHINGMAPS_STAMP_TRAIN_IDS)]
    assert tuple(row.tolist()) == STUFFTHINGMAPS_STAMP_TRAIN_IDS
    assert len(build_dataset("coco-stuff", tmp_path, "val")) == 2  # now readable

    assert main(["prepare", "coco-stuff", str(base), "--splits", "val2017", "--quiet"]) == 0  # done already
    assert "wrote 0 label files" in capsys.readouterr().out

    assert main(["prepare", "coco-stuff", str(tmp_path), "--splits", "train2017", "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "train2017" in error


@pytest.mark.parametrize("command, flags", [
    ("eval", ["--dataset", "--data-root", "--split", "--prompts", "--clip", "--pretrained", "--clip-weights",
              "--mode", "--short-side", "--crop-size", "--stride", "--precision", "--class-names-file",
              "--unseen-file", "--limit", "--out", "520 for context", "--peer-class-names", "voc21", "pc459"]),
    ("prepare", ["coco-stuff", "coco-object", "cityscapes", "ade847", "pc459", "ROOT", "--workers", "--splits"]),
])
def test_help_is_complete(command: str, flags: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in flags:
        assert flag in text
