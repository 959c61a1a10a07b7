"""MVP-SEG+: the pseudo-label rule, the students, the transfer loop, its resume, and sharded pseudo-labels."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from fakedata import write_custom
from PIL import Image
from safetensors.torch import load_file, save_file

import mvpseg
from mvpseg.build import build_student, load_student
from mvpseg.checkpoint import read_student_checkpoint, save_prompt_checkpoint
from mvpseg.config import MVPSegConfig, StudentConfig, TransferConfig
from mvpseg.data import build_dataset
from mvpseg.transfer import UNSEEN, VOID, TransferStep, assign_unseen, transfer, write_pseudo_labels
from mvpseg.transfer.pseudo import on_pixels, prompts_fingerprint, teacher_scores, transfer_vocabulary

S, U = 3, 9  # a seen class and the "unseen" sentinel used in hand-made maps below


# --- the rule ------------------------------------------------------------------------------------------


def test_unseen_pixels_get_the_best_unseen_class_and_nothing_else_changes() -> None:
    unseen = [4, 7]
    labels = torch.tensor([[[S, UNSEEN, 255], [UNSEEN, 1, VOID]]])  # (1, 2, 3)
    # Log-probabilities among the unseen classes (4, 7) per pixel: 7 wins at (0, 1), 4 at (1, 0).
    scores = torch.log(torch.tensor([[[[0.5, 0.2, 0.9], [0.6, 0.1, 0.3]],
                                      [[0.5, 0.8, 0.1], [0.4, 0.9, 0.7]]]]))  # (1, U=2, 2, 3)
    out = assign_unseen(labels, scores, unseen)
    assert out.tolist() == [[[S, 7, 255], [4, 1, 7]]]  # seen and void kept; VOID marker filled (label_void)
    assert set(out[labels == UNSEEN].tolist()) <= set(unseen)  # never a seen class
    # Earlier pseudo-labels (unseen classes) are relabelled: the self-training phase's case.
    again = assign_unseen(torch.tensor([[[4, 4, S], [7, 1, 255]]]), scores, unseen)
    assert again.tolist() == [[[4, 7, S], [4, 1, 255]]]
    # Confidence: pixels whose best unseen probability is below it stay unlabelled.
    sure = assign_unseen(labels, scores, unseen, confidence=0.65)
    assert sure.tolist() == [[[S, 7, 255], [255, 1, 7]]]  # (1, 0): 0.6 < 0.65


def test_scores_are_upsampled_to_the_labels_and_taken_among_unseen_classes_only() -> None:
    # Three classes: seen 0 scores highest everywhere, unseen 1 and 2 split left / right.
    fused = torch.tensor([[[[9.0, 9.0]], [[2.0, 0.0]], [[0.0, 2.0]]]])  # (1, C=3, 1, 2)
    output = mvpseg.MVPSegOutput(fused_logits=fused, presence_logits=torch.tensor([[0.0, -9.0, 9.0]]),
                                 prompt_maps=torch.zeros(1))
    labels = torch.full((1, 2, 4), UNSEEN)
    plain = assign_unseen(labels, teacher_scores(output, [1, 2], use_gpr=False), [1, 2])
    assert plain.tolist() == [[[1, 1, 2, 2]] * 2]  # bilinear upsampling keeps the halves; class 0 never chosen
    gpr = assign_unseen(labels, teacher_scores(output, [1, 2], use_gpr=True), [1, 2])
    assert gpr.tolist() == [[[2, 2, 2, 2]] * 2]  # GPR's class scores (class 1 judged absent) change the ranking
    probabilities = teacher_scores(output, [1, 2], use_gpr=False).exp()
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(1, 1, 2))


def test_vocabulary_marks_unseen_and_void_pixels(tmp_path: Path) -> None:
    dataset = build_dataset("custom", write_custom(tmp_path / "d"), "train")
    names, label_map, unseen = transfer_vocabulary(dataset)
    assert names == ["sky", "grass", "red car", "tree"] and unseen == [3]
    assert label_map[[0, 1, 2, 3, 255]].tolist() == [0, 1, 2, UNSEEN, 255]
    assert transfer_vocabulary(dataset, label_void=True)[1][255] == VOID


# --- the students -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def teacher(tiny_rn: mvpseg.ClipBundle) -> mvpseg.MVPSeg:
    return mvpseg.build_mvpseg(tiny_rn, MVPSegConfig(num_prompts=2, num_context=3),
                               generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("arch, head, output_stride, stride", [
    ("deeplabv2", "mvpseg", 8, 8), ("deeplabv2", "maskclip", 16, 16), ("deeplabv3plus", "mvpseg", 8, 4),
    ("deeplabv3plus", "maskclip", 16, 4), ("deeplabv3plus", "maskclip", 8, 4)])
def test_student_maps_come_at_its_stride(teacher: mvpseg.MVPSeg, arch: str, head: str, output_stride: int,
                                         stride: int) -> None:
    torch.manual_seed(0)
    student = build_student(teacher, StudentConfig(arch=arch, head=head, backbone="clip", output_stride=output_stride,
                                                   head_channels=16 if head == "mvpseg" else None)).eval()
    assert student.feature_stride == stride
    with torch.no_grad():
        output = student(torch.randn(2, 3, 64, 96), ["cat", "dog", "grass"])
    assert output.fused_logits.shape == (2, 3, 64 // stride, 96 // stride)
    assert output.prompt_maps.shape == (2, 3, 3, 64 // stride, 96 // stride) and output.presence_logits is None


def test_torchvision_backbones_build_offline_from_a_local_file(teacher: mvpseg.MVPSeg, tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    reference = torchvision.models.resnet50(weights=None)
    weights = tmp_path / "resnet50.pth"
    torch.save(reference.state_dict(), weights)
    student = build_student(teacher, StudentConfig(backbone="resnet50", backbone_weights=str(weights), output_stride=16,
                                                   head="mvpseg", head_channels=8))
    torch.testing.assert_close(student.backbone.stem[0].weight, reference.conv1.weight)
    assert student.feature_stride == 16
    with torch.no_grad():
        assert student.eval()(torch.randn(1, 3, 64, 64), ["a"]).fused_logits.shape == (1, 1, 4, 4)
    bad = tmp_path / "bad.safetensors"
    save_file({"x": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="does not fit the resnet50 backbone.*resnet50-0676ba61.pth"):
        build_student(teacher, StudentConfig(backbone="resnet50", backbone_weights=str(bad)))


def test_a_clip_backbone_needs_a_resnet_clip(tiny_vit: mvpseg.ClipBundle) -> None:
    vit_teacher = mvpseg.build_mvpseg(tiny_vit, MVPSegConfig(num_prompts=1, num_context=2))
    with pytest.raises(ValueError, match="needs a ResNet CLIP"):
        build_student(vit_teacher, StudentConfig(backbone="clip"))


def test_a_student_answers_class_names_it_never_trained_on(teacher: mvpseg.MVPSeg) -> None:
    torch.manual_seed(0)
    student = build_student(teacher, StudentConfig(backbone="clip", head="mvpseg", head_channels=16),
                            background=True).eval()
    names = ["a violet giraffe", "background", "the moon"]
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        output = student(images, names)
        features = student.features(images)  # (1, D, 8, 8), unit length
        text = teacher.prompts(names)  # the teacher's prompts: (K + 1, C, D)
        text[:, 1] = F.normalize(student.background, dim=0)  # "background": the learned embedding
        expected = student.head.tau1 * torch.einsum("bdhw,pcd->bpchw", features, text)[:, 1:].sum(dim=1)
    torch.testing.assert_close(features.norm(dim=1), torch.ones(1, 8, 8))
    torch.testing.assert_close(output.fused_logits, expected, rtol=1e-4, atol=1e-4)


# --- the loop -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, tiny_rn: mvpseg.ClipBundle,
          teacher: mvpseg.MVPSeg) -> tuple[Path, Path, Path]:
    """A custom dataset with an unseen class, a tiny CLIP file and a prompt checkpoint learned on it."""
    folder = tmp_path_factory.mktemp("transfer")
    root = write_custom(folder / "data", num_train=6, num_val=2, size=(64, 64))
    weights = folder / "tiny-rn.safetensors"
    save_file(dict(tiny_rn.model.state_dict()), weights)
    clip = mvpseg.load_clip("test-tiny-rn", str(weights))
    prompts = mvpseg.build_mvpseg(clip, MVPSegConfig(num_prompts=2, num_context=3),
                                  generator=torch.Generator().manual_seed(0))
    return root, weights, save_prompt_checkpoint(folder / "prompts.safetensors", prompts)


def _config(setup: tuple[Path, Path, Path], out: Path, **overrides) -> TransferConfig:
    root, weights, prompts = setup
    values = dict(dataset="custom", data_root=str(root), prompts=str(prompts), clip="test-tiny-rn",
                  pretrained=str(weights), out=str(out), iters=6, self_train_from=3, batch_size=2, crop_size=32,
                  lr=0.01, num_workers=0, log_every=1, checkpoint_every=3,
                  student=StudentConfig(backbone="clip", head="mvpseg", head_channels=8, freeze_bn="backbone"))
    values.update(overrides)
    return TransferConfig(**values)


def test_transfer_trains_a_student_that_segments_like_a_segmenter(setup: tuple[Path, Path, Path],
                                                                 tmp_path: Path) -> None:
    steps: list[TransferStep] = []
    path = transfer(_config(setup, tmp_path / "run"), progress=False, on_step=lambda step, record: steps.append(record))
    # Who ranked the unseen pixels, on maps of which width. crop 32: the teacher's maps are 1 cell wide (stride 32),
    # the student's 4 (stride 8); self_train_from=3 counts steps from 1 as MaskCLIP+: the teacher labels steps 1, 2.
    assert [(record.ranked_by, record.unseen_scores.shape[-1]) for record in steps] == [
        ("teacher", 1), ("teacher", 1), ("student", 4), ("student", 4), ("student", 4), ("student", 4)]
    tensors, metadata = read_student_checkpoint(path)
    assert metadata["teacher"]["prompts"] == "prompts.safetensors" and metadata["clip"]["name"] == "test-tiny-rn"
    assert metadata["extra"]["unseen"] == ["tree"] and metadata["config"]["backbone"] == "clip"
    assert "prompts.contexts" in tensors and "decoder.projection.weight" in tensors
    with (tmp_path / "run" / "log.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["step"]) for row in rows] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(float(row["loss"])) for row in rows)
    segmenter = mvpseg.Segmenter.from_pretrained(clip="test-tiny-rn", pretrained=str(setup[1]), student=path,
                                                 device="cpu", config=mvpseg.InferenceConfig(short_side=64))
    prediction = segmenter.predict(np.zeros((40, 50, 3), np.uint8), ["sky", "a new class", "tree"])
    assert prediction.labels.shape == (40, 50) and prediction.presence is None
    assert segmenter.feature_stride == 8


class _Killed(Exception):
    pass


def test_a_killed_and_resumed_transfer_ends_bit_for_bit_like_an_uninterrupted_one(
        setup: tuple[Path, Path, Path], tmp_path: Path) -> None:
    # DeepLabv3+ has dropout: each step's random draws must not depend on the interruption.
    student = StudentConfig(arch="deeplabv3plus", head="mvpseg", backbone="clip", head_channels=8, freeze_bn="backbone")
    whole = transfer(_config(setup, tmp_path / "whole", student=student), progress=False)

    def kill_after_step_4(step: int, record: TransferStep) -> None:
        if step == 4:  # one step past the checkpoint at step 3: that step's work is lost, as in a crash
            raise _Killed

    config = _config(setup, tmp_path / "killed", student=student)
    with pytest.raises(_Killed):
        transfer(config, progress=False, on_step=kill_after_step_4)
    resumed = transfer(config, resume=True, progress=False)
    expected, got = load_file(whole), load_file(resumed)
    assert set(expected) == set(got)
    assert all(torch.equal(expected[name], got[name]) for name in expected)
    with pytest.raises(mvpseg.CheckpointError, match="self_train_from"):
        transfer(replace(config, self_train_from=2), resume=True, progress=False)


def test_written_pseudo_labels_teach_like_the_online_teacher(setup: tuple[Path, Path, Path], tmp_path: Path) -> None:
    root, weights, prompts = setup
    segmenter = mvpseg.Segmenter.from_pretrained(clip="test-tiny-rn", pretrained=str(weights), prompts=prompts,
                                                 device="cpu", config=mvpseg.InferenceConfig(short_side=None,
                                                                                             mode="whole"))
    dataset = build_dataset("custom", root, "train")
    assert write_pseudo_labels(segmenter, dataset, tmp_path / "labels", progress=False,
                               teacher={"prompts_sha256": prompts_fingerprint(prompts)}) == 6
    for index in range(len(dataset)):
        _, truth = dataset.load(index)
        written = np.asarray(Image.open(tmp_path / "labels" / f"{dataset.ids[index]}.png")).astype(np.int64)
        seen = (truth != 3) & (truth != 255)
        assert np.array_equal(written[seen], truth[seen]) and np.all(written[truth == 255] == 255)
        assert np.all(written[truth == 3] == 3)  # the only unseen class: every unseen pixel gets it
    meta = json.loads((tmp_path / "labels" / "meta.json").read_text())
    assert meta["unseen"] == ["tree"] and meta["images"] == 6
    path = transfer(_config(setup, tmp_path / "offline", pseudo_labels=str(tmp_path / "labels")), progress=False)
    assert load_student(path, mvpseg.load_clip("test-tiny-rn", str(weights))).feature_stride == 8


def _pseudo_worker(rank: int, rendezvous: str, config_dir: str, weights: str, prompts: str, data_root: str,
                   out: str) -> None:
    from mvpseg import distributed

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    open_clip.add_model_config(config_dir)
    distributed.init_distributed("cpu", init_method=f"file://{rendezvous}", timeout_s=120)
    try:
        segmenter = mvpseg.Segmenter.from_pretrained(clip="test-tiny-rn", pretrained=weights, prompts=prompts,
                                                     device="cpu", config=mvpseg.InferenceConfig(short_side=48))
        dataset = build_dataset("custom", data_root, "train", unseen_file=Path(data_root) / "unseen2.txt")
        written = write_pseudo_labels(segmenter, dataset, out, progress=False)
        Path(out, f"rank{rank}.count").write_text(str(written))
    finally:
        distributed.cleanup()


def test_pseudo_labels_of_two_processes_equal_those_of_one(setup: tuple[Path, Path, Path], tmp_path: Path,
                                                           tiny_configs: Path) -> None:
    root, weights, prompts = setup
    # A two-class unseen split, so that the teacher's choice matters.
    (root / "unseen2.txt").write_text("red car\ntree\n")
    dataset = build_dataset("custom", root, "train", unseen_file=root / "unseen2.txt")
    segmenter = mvpseg.Segmenter.from_pretrained(clip="test-tiny-rn", pretrained=str(weights), prompts=prompts,
                                                 device="cpu", config=mvpseg.InferenceConfig(short_side=48))
    write_pseudo_labels(segmenter, dataset, tmp_path / "one", progress=False)
    mp.start_processes(_pseudo_worker, nprocs=2, join=True, start_method="fork",
                       args=(str(tmp_path / "rendezvous"), str(tiny_configs), str(weights), str(prompts), str(root),
                             str(tmp_path / "two")))
    counts = [int((tmp_path / "two" / f"rank{rank}.count").read_text()) for rank in range(2)]
    assert counts == [3, 3]  # every image written once, by one process
    for image_id in dataset.ids:
        one = np.asarray(Image.open(tmp_path / "one" / f"{image_id}.png"))
        two = np.asarray(Image.open(tmp_path / "two" / f"{image_id}.png"))
        assert np.array_equal(one, two), image_id


def test_transfer_eval_and_segment_from_the_command_line(setup: tuple[Path, Path, Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from mvpseg.cli import main

    root, weights, prompts = setup
    out = tmp_path / "run"
    assert main(["transfer", "--dataset", "custom", "--data-root", str(root), "--prompts", str(prompts),
                 "--clip-weights", str(weights), "--out", str(out), "--iters", "2", "--self-train-from", "1",
                 "--batch-size", "2", "--crop-size", "32", "--backbone", "clip",
                 "--num-workers", "0", "--quiet"]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["student"]["backbone"] == "clip" and saved["self_train_from"] == 1 and saved["clip"] is None
    student = out / "student.safetensors"
    assert main(["eval", "--dataset", "custom", "--data-root", str(root), "--student", str(student), "--clip-weights",
                 str(weights), "--out", str(tmp_path / "eval"), "--short-side", "64", "--quiet"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["setup"]["prompts"] == str(student) and metrics["miou_unseen"] is not None
    assert metrics["setup"]["inference"]["mode"] == "whole"  # students: MaskCLIP+'s whole-image protocol
    image = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(image)
    assert main(["segment", str(image), "--classes", "cat,dog", "--student", str(student), "--clip-weights",
                 str(weights), "--out", str(tmp_path / "seg"), "--short-side", "64", "--quiet"]) == 0
    assert Image.open(tmp_path / "seg" / "a.png").size == (56, 40)
    capsys.readouterr()
    assert main(["segment", str(image), "--classes", "cat", "--student", str(student), "--prompts", str(prompts),
                 "--clip-weights", str(weights), "--out", str(tmp_path / "seg")]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["transfer", "--dataset", "custom", "--data-root", str(root), "--out", str(out)]) == 2
    assert "--prompts CKPT" in capsys.readouterr().err


def test_train_and_transfer_record_the_inference_settings_their_models_are_made_for(
        setup: tuple[Path, Path, Path], tmp_path: Path) -> None:
    from mvpseg.checkpoint import read_prompt_checkpoint
    from mvpseg.config import TrainConfig, inference_made_for
    from mvpseg.train import train

    root, weights, _ = setup
    prompts = train(TrainConfig(dataset="custom", data_root=str(root), clip="test-tiny-rn", pretrained=str(weights),
                                out=str(tmp_path / "train"), model=MVPSegConfig(num_prompts=2, num_context=3),
                                iters=2, batch_size=2, crop_size=32, scale=(256, 64), num_workers=0,
                                checkpoint_every=2), progress=False)
    assert read_prompt_checkpoint(prompts, with_tensors=False)[1]["inference"] == {
        "short_side": 64, "long_side": None, "mode": "slide", "crop_size": 512, "stride": 426}
    student = transfer(_config(setup, tmp_path / "transfer", iters=2, scale=(256, 64)), progress=False)
    assert read_student_checkpoint(student, with_tensors=False)[1]["inference"] == {
        "short_side": 64, "long_side": None, "mode": "whole"}
    segmenter = mvpseg.Segmenter.from_pretrained(student=student, pretrained=str(weights), device="cpu")
    assert (segmenter.config.short_side, segmenter.config.mode) == (64, "whole")
    assert inference_made_for("context60", (520, 520)) == {"short_side": None, "long_side": 520, "mode": "whole",
                                                           "crop_size": 512, "stride": 426}
    assert inference_made_for("voc", (2048, 512))["short_side"] == 512


# --- the transfer code's own choices, each pinned by a test that fails if it changes ---------------------------


def _bilinear_1d(values: np.ndarray, size: int) -> np.ndarray:
    """Half-pixel-centre linear interpolation of a 1-D row to ``size`` samples (edges clamped): an independent
    path to ``F.interpolate(mode="bilinear", align_corners=False)`` along one axis."""
    source = np.clip((np.arange(size) + 0.5) * len(values) / size - 0.5, 0, len(values) - 1)
    left = np.floor(source).astype(int)
    right = np.minimum(left + 1, len(values) - 1)
    weight = source - left
    return values[left] * (1 - weight) + values[right] * weight


def test_teacher_scores_reach_the_pixels_bilinearly() -> None:
    # One row of two cells, stride 4: pixels between the cells' centres blend them (nearest would not).
    cells = np.array([0.0, 4.0])
    scores = torch.tensor(cells, dtype=torch.float32).view(1, 1, 1, 2)  # (B, U=1, h=1, w=2)
    pixels = on_pixels(scores, stride=4, size=(4, 6))  # padded to 4 x 8, cropped to 6 columns
    expected = np.tile(_bilinear_1d(cells, 8)[:6], (4, 1))  # 0, 0, 0.5, 1.5, 2.5, 3.5 in every row
    np.testing.assert_allclose(pixels[0, 0].numpy(), expected, atol=1e-6)
    # assign_unseen upsamples smaller scores the same way: class a's lead over class b lasts past the midpoint.
    a, b = np.array([3.0, 0.0]), np.array([0.0, 1.0])
    both = torch.tensor(np.stack([a, b]), dtype=torch.float32).view(1, 2, 1, 2)  # (B, U=2, 1, 2)
    labels = assign_unseen(torch.full((1, 1, 8), UNSEEN), both, [5, 6])
    expected_labels = np.where(_bilinear_1d(a, 8) >= _bilinear_1d(b, 8), 5, 6)
    assert labels[0, 0].tolist() == expected_labels.tolist() == [5, 5, 5, 5, 5, 6, 6, 6]


def test_the_online_teacher_ranks_unseen_classes_as_teacher_gpr_says(setup: tuple[Path, Path, Path],
                                                                    tmp_path: Path) -> None:
    (tmp_path / "unseen.txt").write_text("red car\ntree\n")  # two unseen classes: a ranking GPR can change
    ranked: dict[bool, list[TransferStep]] = {False: [], True: []}
    for teacher_gpr, records in ranked.items():
        transfer(_config(setup, tmp_path / str(teacher_gpr), iters=3, crop_size=64, teacher_gpr=teacher_gpr,
                         unseen_file=str(tmp_path / "unseen.txt")),
                 progress=False, on_step=lambda step, record, records=records: records.append(record))
    for records in ranked.values():  # steps 1-2: the teacher (2 x 2 cells at crop 64); step 3: the student
        assert [(record.ranked_by, record.unseen_scores.shape[1:]) for record in records] == [
            ("teacher", (2, 2, 2)), ("teacher", (2, 2, 2)), ("student", (2, 8, 8))]
    # Step 1 (same crops, same teacher): GPR multiplies each class's map by its image-level score g, so the
    # log-odds of red car over tree move by log g(red car) - log g(tree): one shift per image, on every cell.
    plain, gpr = ranked[False][0].unseen_scores, ranked[True][0].unseen_scores  # (B, U, h, w)
    shift = (gpr[:, 0] - gpr[:, 1]) - (plain[:, 0] - plain[:, 1])  # (B, h, w)
    assert shift.abs().min() > 1e-3
    torch.testing.assert_close(shift, shift[:, :1, :1].expand_as(shift))


@pytest.mark.parametrize("background", [None, False, True])
def test_a_student_learns_background_when_the_dataset_names_one(
        tmp_path: Path, tiny_rn: mvpseg.ClipBundle, setup: tuple[Path, Path, Path], background: bool | None) -> None:
    root = write_custom(tmp_path / "data", class_names=("background", "sky", "grass", "tree"), num_train=4,
                        num_val=1, size=(64, 64))
    path = transfer(_config(setup, tmp_path / "run", data_root=str(root), iters=2, self_train_from=1,
                            student=replace(_config(setup, tmp_path).student, background=background)),
                    progress=False)
    tensors, _ = read_student_checkpoint(path)
    assert ("background" in tensors) == (background is not False)  # none: learned, as the dataset has one
    named = transfer(_config(setup, tmp_path / "plain", iters=2, self_train_from=1), progress=False)
    assert "background" not in read_student_checkpoint(named)[0]  # the default dataset names no background
