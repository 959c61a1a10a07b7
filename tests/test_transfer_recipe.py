"""MVP-SEG+ as MaskCLIP+ trains it: the labels that reach the loss, BatchNorms, heads and backbones, schedules,
presets, pseudo-label folders, processes, normalisation and resume (each test fails when its behaviour breaks)."""

from __future__ import annotations

import json
import math
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
from safetensors.torch import load_file, save_file

import mvpseg
from mvpseg.backbones import IMAGENET_MEAN, IMAGENET_STD, build_backbone
from mvpseg.build import build_student, from_pretrained, load_student
from mvpseg.checkpoint import load_training_state, save_prompt_checkpoint
from mvpseg.config import TRANSFER_PRESETS, MVPSegConfig, StudentConfig, TransferConfig
from mvpseg.data import DataLayoutError, build_dataset
from mvpseg.losses import segmentation_loss
from mvpseg.runs import Run, SamplePositions, augmentation, learning_rate, seeded_step
from mvpseg.transfer import TransferStep, transfer, write_pseudo_labels
from mvpseg.transfer.loop import synchronise_batchnorms
from mvpseg.transfer.pseudo import (
    UNSEEN,
    VOID,
    check_unseen_hidden,
    on_pixels,
    prompts_fingerprint,
    transfer_vocabulary,
)

UNSEEN_NAMES = ["red car", "tree"]  # classes 2 and 3 of the fake dataset


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_rn: mvpseg.ClipBundle) -> dict[str, Path]:
    """A custom dataset with a two-class unseen split, a tiny CLIP file, two prompt checkpoints learned on it."""
    folder = tmp_path_factory.mktemp("recipe")
    root = write_custom(folder / "data", num_train=6, num_val=2, size=(64, 64))
    (root / "unseen2.txt").write_text("\n".join(UNSEEN_NAMES) + "\n")
    weights = folder / "tiny-rn.safetensors"
    save_file(dict(tiny_rn.model.state_dict()), weights)
    clip = mvpseg.load_clip("test-tiny-rn", str(weights))
    paths = {"root": root, "weights": weights}
    for seed in (0, 1):
        prompts = mvpseg.build_mvpseg(clip, MVPSegConfig(num_prompts=2, num_context=3),
                                      generator=torch.Generator().manual_seed(seed))
        paths[f"prompts{seed}"] = save_prompt_checkpoint(folder / f"prompts{seed}.safetensors", prompts)
    return paths


def _config(world: dict[str, Path], out: Path, **overrides) -> TransferConfig:
    values = dict(dataset="custom", data_root=str(world["root"]), unseen_file=str(world["root"] / "unseen2.txt"),
                  prompts=str(world["prompts0"]), clip="test-tiny-rn", pretrained=str(world["weights"]), out=str(out),
                  iters=4, self_train_from=3, batch_size=2, crop_size=40, scale=(64, 64), ratio_range=(1.0, 1.0),
                  lr=0.01, num_workers=0, log_every=1, checkpoint_every=2,
                  student=StudentConfig(backbone="clip", head="mvpseg", head_channels=8, freeze_bn="backbone"))
    values.update(overrides)
    return TransferConfig(**values)


def _initial_student(world: dict[str, Path], config: TransferConfig):
    """The student a run starts from (the loop seeds its initialisation by the run's seed alone)."""
    teacher = from_pretrained("test-tiny-rn", str(world["weights"]), config.prompts)
    with seeded_step(config.seed, -1, 0, torch.device("cpu")):
        return build_student(teacher, config.student, background=False)


# --- the labels that reach the loss ---------------------------------------------------------------------


def test_the_loss_sees_ground_truth_on_seen_pixels_and_the_teacher_then_the_student_on_unseen_ones(
        world: dict[str, Path], tmp_path: Path) -> None:
    def run(folder: str, **overrides) -> list[TransferStep]:
        steps: list[TransferStep] = []
        transfer(_config(world, tmp_path / folder, **overrides), progress=False,
                 on_step=lambda step, record: steps.append(record))
        return steps

    # A confidence threshold halfway between the teacher's least and most sure cells (its first two steps, the same
    # crops in every run): where it falls between pixels depends on how the cells lie over them.
    sure = torch.cat([record.unseen_scores.exp().amax(dim=1).flatten() for record in run("teacher", iters=2)])
    threshold = float(sure.min() + sure.max()) / 2
    config = _config(world, tmp_path / "run", unseen_min_probability=threshold)
    steps = run("run", unseen_min_probability=threshold)
    # The ground truth of the very crops the run drew: same seed, same positions, the dataset's own labels.
    dataset = build_dataset("custom", world["root"], "train", seed=config.seed, unseen_file=config.unseen_file)
    identity = np.full(256, 255, dtype=np.int64)
    identity[:4] = np.arange(4)
    truth = SamplePositions(dataset, augmentation(config), identity, config.seed)
    unseen = torch.tensor([2, 3])

    def labels(gt: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Ground truth on seen pixels; on unseen ones the best unseen class of scores (B, U, 40, 40) when sure."""
        best, choice = scores.max(dim=1)
        named = torch.where(best.exp() >= threshold, unseen[choice], torch.full_like(choice, 255))
        return torch.where(torch.isin(gt, unseen), named, gt)

    assert [record.ranked_by for record in steps] == ["teacher", "teacher", "student", "student"]
    stretched_differs, outcomes = [], set()
    for step, record in enumerate(steps):
        gt = torch.stack([truth[step * 2 + i]["label"] for i in range(2)])  # (B, 40, 40)
        grid = record.unseen_scores  # (B, U, h, w): the teacher's (stride 32, 2 cells) until step 2, then the student's (5)
        assert grid is not None and grid.shape[-1] == (2 if step < 2 else 5)
        assert bool(torch.isin(gt, unseen).any())
        if step < 2:  # the teacher's cells cover the crop padded to 64: upsample to 64, keep the crop's 40 pixels
            upsampled = F.interpolate(grid, size=(64, 64), mode="bilinear", align_corners=False)[..., :40, :40]
            stretched = F.interpolate(grid, size=(40, 40), mode="bilinear", align_corners=False)  # cells over the crop
            stretched_differs.append(not torch.equal(labels(gt, upsampled), labels(gt, stretched)))
        else:
            upsampled = F.interpolate(grid, size=(40, 40), mode="bilinear", align_corners=False)
        assert torch.equal(record.labels, labels(gt, upsampled)), step
        hidden = torch.isin(gt, unseen)  # what became of the unseen pixels: unsure, named as in truth, named otherwise
        outcomes |= {"unsure" if label == 255 else "right" if label == truth_label else "wrong"
                     for label, truth_label in zip(record.labels[hidden].tolist(), gt[hidden].tolist())}
    assert any(stretched_differs)  # the test can tell the teacher's cells in place from cells stretched over the crop,
    assert outcomes == {"unsure", "right", "wrong"}  # a threshold from none, and a ranking from the ground truth


def test_the_label_map_hides_unseen_ground_truth_and_a_leak_stops_a_step(world: dict[str, Path]) -> None:
    dataset = build_dataset("custom", world["root"], "train", unseen_file=str(world["root"] / "unseen2.txt"))
    names, label_map, unseen = transfer_vocabulary(dataset, label_void=True)
    assert names == ["sky", "grass", "red car", "tree"] and unseen == [2, 3]
    assert label_map[[0, 1, 2, 3, 255]].tolist() == [0, 1, UNSEEN, UNSEEN, VOID]  # the truth of 2 and 3 withheld
    assert not np.isin(label_map, unseen).any()  # no dataset label becomes an unseen class
    labels = torch.from_numpy(label_map[np.array([[[0, 1], [2, 3]], [[255, 3], [1, 0]]])])  # (B, 2, 2)
    check_unseen_hidden(labels, unseen, step=0)  # markers and seen classes pass
    with pytest.raises(RuntimeError, match="unseen ground truth reached step 7: the label map leaks"):
        check_unseen_hidden(torch.from_numpy(np.array([[[0, 1], [2, UNSEEN]]])), unseen, step=7)


# --- BatchNorms, the optimiser, processes ----------------------------------------------------------------


def _norm_tensors(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    keys = ("weight", "bias", "running_mean", "running_var")
    return {key: value for key, value in state.items()
            if key.startswith(prefix) and key.rsplit(".", 1)[-1] in keys and value.ndim == 1 and "conv" not in key
            and not key.endswith("projection.bias")}


@pytest.mark.parametrize("freeze", ["backbone", "all"])
def test_frozen_batchnorms_keep_their_parameters_and_statistics(world: dict[str, Path], tmp_path: Path,
                                                                freeze: str) -> None:
    config = _config(world, tmp_path / "run", iters=2, self_train_from=None,
                     student=StudentConfig(backbone="clip", head="mvpseg", head_channels=8, freeze_bn=freeze))
    before = _initial_student(world, config).state_dict()
    after = load_file(transfer(config, progress=False))
    for prefix, frozen in (("backbone.", True), ("decoder.", freeze == "all")):
        norms = _norm_tensors(before, prefix)
        assert len(norms) >= 8, prefix
        same = [torch.equal(value, after[key]) for key, value in norms.items()]
        assert all(same) if frozen else not any(same), (prefix, freeze)


def test_the_optimiser_holds_exactly_the_trained_parameters_and_no_decay_on_temperatures(
        world: dict[str, Path], tmp_path: Path) -> None:
    config = _config(world, tmp_path / "run", weight_decay=5e-4)
    student = _initial_student(world, config)
    optimizer = Run(config, resume=False).begin(student, no_decay=lambda name: "log_tau" in name)
    held = [parameter for group in optimizer.param_groups for parameter in group["params"]]
    trained = [parameter for parameter in student.parameters() if parameter.requires_grad]
    assert {id(p) for p in held} == {id(p) for p in trained} and len(held) == len(trained)
    assert not any(id(p) in {id(q) for q in held} for norm in student.backbone.modules()
                   if isinstance(norm, torch.nn.BatchNorm2d) for p in norm.parameters())
    decay = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    assert decay[id(student.head.log_tau1)] == 0.0 and student.head.log_tau1.requires_grad
    assert decay[id(student.decoder.projection.weight)] == 5e-4
    assert not student.head.log_tau2.requires_grad and not student.head.gpr_offset.requires_grad


def test_training_batchnorms_are_synchronised_on_cuda_and_refused_over_cpu_processes(
        world: dict[str, Path]) -> None:
    config = _config(world, Path("unused"))
    student = _initial_student(world, config)
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match="cannot synchronise them over 2 cpu processes.*--freeze-bn all"):
        synchronise_batchnorms(student, world_size=2, local_batch=1, device=cpu)
    assert synchronise_batchnorms(student, world_size=1, local_batch=2, device=cpu) is student
    frozen = _initial_student(world, replace(config, student=replace(config.student, freeze_bn="all")))
    assert synchronise_batchnorms(frozen, world_size=2, local_batch=1, device=cpu) is frozen


def test_deeplabv3plus_at_one_image_per_process_is_refused_before_the_run_or_trains(
        world: dict[str, Path], tmp_path: Path) -> None:
    steps = []
    for head in ("maskclip", "mvpseg"):
        config = _config(world, tmp_path / head, batch_size=1, iters=1, checkpoint_every=1,
                         student=StudentConfig(arch="deeplabv3plus", head=head, backbone="clip",
                                               head_channels=8 if head == "mvpseg" else None))
        with pytest.raises(ValueError, match="image-pooling BatchNorm needs at least 2 images"):
            transfer(config, progress=False, on_step=lambda step, record: steps.append(step))
    assert steps == []  # refused before the first step
    config = _config(world, tmp_path / "frozen", batch_size=1, iters=1, checkpoint_every=1,
                     student=StudentConfig(arch="deeplabv3plus", backbone="clip", freeze_bn="all"))
    transfer(config, progress=False, on_step=lambda step, record: steps.append(step))
    assert steps == [1]


def _transfer_worker(rank: int, rendezvous: str, config_dir: str, config: TransferConfig) -> None:
    from mvpseg import distributed

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    open_clip.add_model_config(config_dir)
    distributed.init_distributed("cpu", init_method=f"file://{rendezvous}", timeout_s=120)
    try:
        transfer(config, progress=False)
    finally:
        distributed.cleanup()


def test_two_gloo_processes_train_the_student_of_one(world: dict[str, Path], tmp_path: Path,
                                                     tiny_configs: Path) -> None:
    # The rule on the CPU: BatchNorms fixed (torch cannot synchronise them there), everything else equal.
    student = StudentConfig(backbone="clip", head="maskclip", freeze_bn="all")
    one = transfer(_config(world, tmp_path / "one", iters=3, checkpoint_every=3, lr=1.0, student=student),
                   progress=False)
    config = _config(world, tmp_path / "two", iters=3, checkpoint_every=3, lr=1.0, student=student)
    mp.start_processes(_transfer_worker, nprocs=2, join=True, start_method="fork",
                       args=(str(tmp_path / "rendezvous"), str(tiny_configs), config))
    expected, got = load_file(one), load_file(tmp_path / "two" / "student.safetensors")
    initial = _initial_student(world, config).state_dict()
    assert set(expected) == set(got)
    # Measured against how far training moved the weights: the two runs differ by rounding alone.
    moved = max(float((expected[key].float() - initial[key].float()).abs().max()) for key in expected)
    worst = max(float((expected[key].float() - got[key].float()).abs().max()) for key in expected)
    assert moved > 1e-4 and worst < 1e-3 * moved, (worst, moved)


def test_every_step_and_every_process_draws_its_own_random_numbers(world: dict[str, Path]) -> None:
    cpu = torch.device("cpu")

    def draw(step: int, rank: int) -> torch.Tensor:
        with seeded_step(0, step, rank, cpu):
            return torch.rand(4)

    draws = {(step, rank): draw(step, rank) for step in range(3) for rank in range(2)}
    assert all(torch.equal(draws[key], draw(*key)) for key in draws)  # a function of (seed, step, rank)
    assert len({tuple(value.tolist()) for value in draws.values()}) == 6
    with seeded_step(1, 0, 0, cpu):
        assert not torch.equal(torch.rand(4), draws[(0, 0)])  # and of the seed
    # Dropout (mvpseg's DeepLabv3+ head) differs between processes of one step.
    student = _initial_student(world, _config(world, Path("unused"), student=StudentConfig(
        arch="deeplabv3plus", head="mvpseg", backbone="clip", head_channels=8))).train()
    images = torch.randn(2, 3, 32, 32)
    outputs = []
    for rank in (0, 1, 0):
        with seeded_step(0, 5, rank, cpu), torch.no_grad():
            outputs.append(student.features(images))
    assert torch.equal(outputs[0], outputs[2]) and not torch.equal(outputs[0], outputs[1])
    # Crops and flips: every sample position has its own view.
    dataset = build_dataset("custom", world["root"], "train")
    samples = SamplePositions(dataset, augmentation(_config(world, Path("unused"), scale=(128, 128))),
                              np.arange(256), seed=0)
    views = [samples[position]["image"] for position in range(12)]  # two epochs of six images
    assert all(not torch.equal(views[i], views[i + 6]) for i in range(6))


# --- heads, backbones, normalisation -------------------------------------------------------------------


def _dilations(stage: torch.nn.Module) -> list[int]:
    return [block.conv2.dilation[0] for block in stage]


@pytest.mark.parametrize("output_stride", [8, 16])
def test_dilation_rates_of_the_backbones_and_both_heads(world: dict[str, Path], output_stride: int) -> None:
    for name in ("resnet50", "resnet50-v1c"):
        backbone = build_backbone(name, output_stride, weights=None)
        stage3, stage4 = (_dilations(stage) for stage in backbone.stages[2:])
        if output_stride == 8:  # mmseg's dilations (1, 1, 2, 4) with contract_dilation: first blocks keep the rate before
            assert stage3 == [1] + [2] * 5 and stage4 == [2, 4, 4]
        else:
            assert stage3 == [1] * 6 and stage4 == [1, 2, 2]
        assert backbone(torch.randn(1, 3, 64, 64))[1].shape[-1] == 64 // output_stride
    teacher = from_pretrained("test-tiny-rn", str(world["weights"]), world["prompts0"])
    heads = {}
    for arch in ("deeplabv2", "deeplabv3plus"):
        for head in ("maskclip", "mvpseg"):
            config = StudentConfig(arch=arch, head=head, backbone="clip", output_stride=output_stride,
                                   head_channels=8 if head == "mvpseg" else None)
            heads[arch, head] = build_student(teacher, config).decoder
    v2 = [6, 12, 18, 24]
    for head in ("maskclip", "mvpseg"):
        branches = heads["deeplabv2", head].branches
        assert [branch[0].dilation[0] for branch in branches] == [rate * 8 // output_stride for rate in v2]
        assert [branch[0].kernel_size[0] for branch in branches] == [3] * 4
    separable = heads["deeplabv3plus", "maskclip"]
    assert separable.branches[0][0].kernel_size == (1, 1)
    assert [branch[0][0].dilation[0] for branch in separable.branches[1:]] == [r * 8 // output_stride
                                                                               for r in (12, 24, 36)]
    assert all(branch[0][0].groups == branch[0][0].in_channels for branch in separable.branches[1:])  # depthwise
    aspp = heads["deeplabv3plus", "mvpseg"].aspp.convs
    assert [aspp[i][0].dilation[0] for i in (1, 2, 3)] == [r * 8 // output_stride for r in (12, 24, 36)]
    clip_stages = build_student(teacher, StudentConfig(backbone="clip", head="maskclip",
                                                       output_stride=output_stride)).backbone.stages
    assert [_dilations(stage) for stage in clip_stages[2:]] == ([[1], [2]] if output_stride == 8 else [[1], [1]])


def test_maskclip_heads_score_unnormalised_features_by_their_product_with_the_text(world: dict[str, Path]) -> None:
    teacher = from_pretrained("test-tiny-rn", str(world["weights"]), world["prompts0"])
    torch.manual_seed(0)
    for arch in ("deeplabv2", "deeplabv3plus"):
        student = build_student(teacher, StudentConfig(arch=arch, backbone="clip")).eval()
        assert not student.head.log_tau1.requires_grad
        images, names = torch.randn(2, 3, 32, 32), ["sky", "tree", "a new class"]
        with torch.no_grad():
            features = student.features(images)  # (B, D, h, w): D wide, no projection, not normalised
            text = teacher.prompts(names)  # (K + 1, C, D)
            expected = torch.einsum("bdhw,cd->bchw", features, text[1:].mean(dim=0))  # the mean prompt's product
            got = student(images, names).fused_logits
        assert features.shape[1] == 32 and not torch.allclose(features.norm(dim=1), torch.ones(1))
        assert not isinstance(student.decoder.projection, torch.nn.Conv2d)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # The DeepLabv2 branches are summed: every branch counts.
    decoder = build_student(teacher, StudentConfig(backbone="clip")).decoder.eval()
    high = torch.randn(1, 512, 4, 4)
    with torch.no_grad():
        total = sum(branch(high) for branch in decoder.branches)
        torch.testing.assert_close(decoder(None, high), total)


def test_the_student_renormalises_clip_pixels_for_an_imagenet_backbone(world: dict[str, Path]) -> None:
    teacher = from_pretrained("test-tiny-rn", str(world["weights"]), world["prompts0"])
    clip = teacher.clip
    raw = torch.rand(1, 3, 32, 32)  # pixels in [0, 1]
    clip_normalised = (raw - torch.tensor(clip.mean).view(1, 3, 1, 1)) / torch.tensor(clip.std).view(1, 3, 1, 1)
    for backbone, mean, std in (("resnet50", IMAGENET_MEAN, IMAGENET_STD), ("clip", clip.mean, clip.std)):
        student = build_student(teacher, StudentConfig(backbone=backbone, backbone_weights=None)).eval()
        seen = []
        student.backbone.register_forward_pre_hook(lambda module, args, seen=seen: seen.append(args[0]))
        with torch.no_grad():
            student.features(clip_normalised)
        expected = (raw - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        torch.testing.assert_close(seen[0], expected, rtol=1e-5, atol=1e-5)
        assert student.pixel_mean == pytest.approx(tuple(mean))


def _mmseg_v1c_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random ResNetV1c-50 state dict with mmseg's key names (stem.N.*, layerN.M.{conv,bn}K, downsample)."""
    import torchvision

    torch.manual_seed(seed)
    state = {key: value.clone() for key, value in torchvision.models.resnet50(weights=None).state_dict().items()
             if key.startswith("layer")}  # mmseg's Bottleneck names its parts as torchvision does
    for index, (cin, cout) in zip((0, 3, 6), ((3, 32), (32, 32), (32, 64))):
        state[f"stem.{index}.weight"] = torch.randn(cout, cin, 3, 3)
        norm = f"stem.{index + 1}"
        state.update({f"{norm}.weight": torch.rand(cout), f"{norm}.bias": torch.randn(cout),
                      f"{norm}.running_mean": torch.randn(cout), f"{norm}.running_var": torch.rand(cout) + 0.5,
                      f"{norm}.num_batches_tracked": torch.tensor(7)})
    state.update({key: torch.randn_like(value) for key, value in state.items() if key.endswith("running_mean")})
    return state


def test_resnet_v1c_loads_mmseg_checkpoints_and_names_the_files_each_backbone_loads(tmp_path: Path) -> None:
    import torchvision

    state = _mmseg_v1c_state()
    path = tmp_path / "resnet50_v1c.pth"
    torch.save({"meta": {"epoch": 100}, "state_dict": state}, path)  # mmcv's checkpoint layout
    backbone = build_backbone("resnet50-v1c", 8, str(path))
    torch.testing.assert_close(backbone.stem[0].weight, state["stem.0.weight"])
    torch.testing.assert_close(backbone.stem[7].running_mean, state["stem.7.running_mean"])
    torch.testing.assert_close(backbone.stages[3][2].conv3.weight, state["layer4.2.conv3.weight"])
    torch.testing.assert_close(backbone.stages[1][0].downsample[1].running_mean,
                               state["layer2.0.downsample.1.running_mean"])
    assert [type(layer).__name__ for layer in backbone.stem][:3] == ["Conv2d", "BatchNorm2d", "ReLU"]
    torchvision_file = tmp_path / "resnet50-0676ba61.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), torchvision_file)
    with pytest.raises(ValueError, match="does not fit the resnet50-v1c backbone.*resnet50_v1c-2cccc1ad.pth"):
        build_backbone("resnet50-v1c", 8, str(torchvision_file))
    with pytest.raises(ValueError, match="does not fit the resnet50 backbone.*resnet50-0676ba61.pth"):
        build_backbone("resnet50", 8, str(path))
    # Not choosing is refused, naming the file to download; "none" is an explicit random start.
    with pytest.raises(ValueError, match=r"resnet101-63fe2227.pth .* and pass it as a local file"):
        build_backbone("resnet101", 8, "")
    assert build_backbone("resnet50", 8, None).output_stride == 8


def test_load_student_with_a_torchvision_backbone_records_its_weights_file_by_name(
        world: dict[str, Path], tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    weights = tmp_path / "local" / "resnet50-0676ba61.pth"
    weights.parent.mkdir()
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), weights)
    student = StudentConfig(backbone="resnet50", backbone_weights=str(weights), head="maskclip", output_stride=16,
                            freeze_bn="backbone")
    path = transfer(_config(world, tmp_path / "run", iters=1, checkpoint_every=1, student=student), progress=False)
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["student"]["backbone_weights"]
    assert recorded == "resnet50-0676ba61.pth"
    assert load_training_state(tmp_path / "run" / "checkpoint.safetensors").config["student"]["backbone_weights"] \
        == "resnet50-0676ba61.pth"
    loaded = load_student(path, mvpseg.load_clip("test-tiny-rn", str(world["weights"])))
    assert loaded.config.backbone == "resnet50" and loaded.config.head == "maskclip"
    saved = load_file(path)
    assert all(torch.equal(value, saved[key]) for key, value in loaded.state_dict().items() if key in saved)
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        output = loaded(images, ["sky", "tree"]).fused_logits
    assert output.shape == (1, 2, 2, 2) and torch.isfinite(output).all()


# --- schedules, losses, presets ------------------------------------------------------------------------


def test_poly_schedule_ends_at_min_lr_and_self_training_starts_at_maskclip_plus_step() -> None:
    config = TransferConfig(iters=100, lr=0.01, min_lr=1e-4, schedule="poly")
    for step in (0, 1, 50, 99):
        expected = (0.01 - 1e-4) * (1 - step / 100) ** 0.9 + 1e-4
        assert learning_rate(config, step) == pytest.approx(expected, rel=1e-12)
    assert learning_rate(replace(config, schedule="cosine"), 100) == pytest.approx(1e-4)
    assert learning_rate(replace(config, min_lr=0.0), 50) == pytest.approx(0.01 * 0.5**0.9)
    # MaskCLIP+ counts steps from 1: VOC's teacher labels counts 1..1999, i.e. 0-based steps 0..1998.
    assert TransferConfig(iters=20000).self_training_step == 1999
    assert TransferConfig(iters=1000).self_training_step == 99  # follows --iters unless set
    assert TransferConfig(iters=1000, self_train_from=300).self_training_step == 299


def test_deterministic_algorithms_are_on_inside_the_run_and_as_the_host_had_them_after() -> None:
    from mvpseg.runs import deterministic_algorithms

    before = torch.are_deterministic_algorithms_enabled()
    with deterministic_algorithms(True):
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    assert torch.are_deterministic_algorithms_enabled() == before and not torch.backends.cudnn.deterministic


def test_mmseg_loss_normalisation_averages_over_every_pixel(world: dict[str, Path]) -> None:
    run = Run(_config(world, Path("unused")), resume=False)
    logits = torch.randn(2, 3, 4, 4)
    labels = torch.randint(0, 3, (2, 4, 4))
    labels[0, :2] = 255  # a quarter of the pixels ignored
    output = mvpseg.MVPSegOutput(fused_logits=logits, presence_logits=None, prompt_maps=torch.zeros(1))
    every = segmentation_loss(output, labels, 255, normalizer=run.normalizer(labels, 255, "all"))
    labelled = segmentation_loss(output, labels, 255, normalizer=run.normalizer(labels, 255, "labelled"))
    summed = F.cross_entropy(logits, labels, ignore_index=255, reduction="sum")
    torch.testing.assert_close(every, summed / 32)  # mmseg 0.x: the mean over all 32 pixels, ignored ones as 0
    torch.testing.assert_close(labelled, summed / 24)


def test_presets_are_maskclip_plus_configs() -> None:
    def preset(name: str) -> TransferConfig:
        return TransferConfig.from_dict(dict(TRANSFER_PRESETS[name]))

    # configs/maskclip_plus/zero_shot/*, _base_/models/maskclip_plus_r50.py, _base_/schedules/schedule_*k.py
    for name, iters, teacher_steps, lr, decay, crop, scale, arch in (
            ("voc", 20000, 1999, 0.01, 5e-4, 512, (2048, 512), "deeplabv2"),
            ("coco-stuff", 80000, 7999, 0.01, 5e-4, 512, (2048, 512), "deeplabv2"),
            ("context60", 40000, 3999, 0.004, 1e-4, 480, (520, 520), "deeplabv3plus")):
        config = preset(name)
        assert (config.iters, config.self_training_step, config.lr, config.weight_decay) == (iters, teacher_steps,
                                                                                               lr, decay), name
        assert (config.crop_size, tuple(config.scale), tuple(config.ratio_range), config.cat_max_ratio) == \
            (crop, scale, (0.5, 2.0), 0.75)
        assert (config.optimizer, config.momentum, config.schedule, config.min_lr) == ("sgd", 0.9, "poly", 1e-4)
        assert (config.batch_size, config.loss_norm, config.photometric) == (16, "all", True)
        assert (config.unseen_min_probability, config.label_void, config.teacher_gpr) == (0.0, False, False)
        student = config.student
        assert (student.arch, student.head, student.backbone, student.output_stride, student.freeze_bn) == \
            (arch, "maskclip", "resnet101-v1c", 8, "none"), name


def test_a_dataset_alias_keeps_its_preset() -> None:
    from mvpseg.cli import build_parser
    from mvpseg.cli.common import run_config

    args = build_parser().parse_args(["transfer", "--dataset", "coco_stuff", "--data-root", "x", "--prompts", "p"])
    config = run_config(args, TransferConfig, TRANSFER_PRESETS)
    assert (config.dataset, config.iters, config.self_training_step) == ("coco-stuff", 80000, 7999)
    args = build_parser().parse_args(["transfer", "--dataset", "Context60", "--data-root", "x", "--prompts", "p",
                                      "--backbone-weights", "none"])
    config = run_config(args, TransferConfig, TRANSFER_PRESETS)
    assert (config.iters, config.lr, config.student.arch, config.student.backbone_weights) == \
        (40000, 0.004, "deeplabv3plus", None)


# --- pseudo-label folders, crops ----------------------------------------------------------------------


def test_a_pseudo_label_folder_written_for_another_run_is_refused(world: dict[str, Path], tmp_path: Path) -> None:
    segmenter = mvpseg.Segmenter.from_pretrained(clip="test-tiny-rn", pretrained=str(world["weights"]),
                                                 prompts=world["prompts0"], device="cpu",
                                                 config=mvpseg.InferenceConfig(short_side=None, mode="whole"))
    one_unseen = build_dataset("custom", world["root"], "train")  # unseen: tree alone
    labels = tmp_path / "labels"
    write_pseudo_labels(segmenter, one_unseen, labels, progress=False,
                        teacher={"prompts_sha256": prompts_fingerprint(world["prompts0"])})
    config = _config(world, tmp_path / "run", pseudo_labels=str(labels))
    with pytest.raises(DataLayoutError, match=r"unseen: labels \['tree'\], run \['red car', 'tree'\]"):
        transfer(config, progress=False)  # "red car" pixels hold its ground truth in these labels
    same_split = replace(config, unseen_file=None)
    with pytest.raises(DataLayoutError, match="teacher prompts_sha256"):
        transfer(replace(same_split, prompts=str(world["prompts1"])), progress=False)
    with pytest.raises(DataLayoutError, match="label_void: labels False, run True"):
        transfer(replace(same_split, label_void=True), progress=False)
    with pytest.raises(DataLayoutError, match="confidence"):
        transfer(replace(same_split, unseen_min_probability=0.5), progress=False)
    (labels / "meta.json").unlink()
    with pytest.raises(DataLayoutError, match="meta.json is missing"):
        transfer(same_split, progress=False)


def test_teacher_cells_stay_over_their_pixels_and_crops_are_padded_with_the_mean_colour() -> None:
    scores = torch.tensor([[[[0.0, 1.0]]]])  # (1, 1, 1, 2): two 32-pixel cells over a 40-pixel crop padded to 64
    aligned = on_pixels(scores, 32, (1, 40))[0, 0, 0]
    torch.testing.assert_close(aligned[:16], torch.zeros(16))  # the first cell's pixels
    assert aligned[39] == pytest.approx(39.5 / 32 - 0.5)  # a pixel 7.5 px into the second cell, not its far edge
    assert on_pixels(scores, 32, (32, 64)) is scores
    config = TransferConfig(crop_size=40, scale=(24, 24), ratio_range=(1.0, 1.0), photometric=False)
    image, label = augmentation(config, (124, 116, 104))(np.zeros((24, 24, 3), np.uint8), np.zeros((24, 24), np.int64),
                                                         np.random.default_rng(0))
    assert image[:, 30, 30].tolist() == [124, 116, 104] and image[:, 5, 5].tolist() == [0, 0, 0]
    assert label[30, 30] == 255 and label[5, 5] == 0


def test_the_gradient_scaler_state_is_saved_and_restored(world: dict[str, Path], tmp_path: Path) -> None:
    # fp16 training scales its loss (on the CPU as on CUDA); the scaler's state is part of a checkpoint.
    whole = _config(world, tmp_path / "whole", precision="fp16")
    transfer(whole, progress=False)
    expected = load_training_state(tmp_path / "whole" / "checkpoint.safetensors").scaler
    # Each of the 4 steps either overflowed in fp16 (the scale halved from 2^16) or counted towards growing it.
    assert expected is not None and expected["_growth_tracker"] + math.log2(65536 / expected["scale"]) == 4
    assert expected["scale"] < 65536  # this tiny model's fp16 gradients overflow at first: the scaler acted

    def kill_after_step_3(step: int, record: TransferStep) -> None:
        if step == 3:
            raise KeyboardInterrupt

    killed = replace(whole, out=str(tmp_path / "killed"))
    with pytest.raises(KeyboardInterrupt):
        transfer(killed, progress=False, on_step=kill_after_step_3)
    assert load_training_state(tmp_path / "killed" / "checkpoint.safetensors").scaler != expected  # step 3's
    transfer(killed, resume=True, progress=False)
    assert load_training_state(tmp_path / "killed" / "checkpoint.safetensors").scaler == expected
    assert math.isfinite(expected["scale"])
