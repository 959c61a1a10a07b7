"""Training: the loss falls on a learnable signal, resume is bit-exact, two processes equal one."""

from __future__ import annotations

import csv
import json
import os
import socket
from dataclasses import replace
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.multiprocessing as mp
from fakedata import write_custom
from safetensors.torch import load_file, save_file

import mvpseg
from mvpseg import distributed
from mvpseg.checkpoint import CheckpointError
from mvpseg.data import build_dataset
from mvpseg.losses import LossWeights, presence_loss, total_loss
from mvpseg.model import MVPSegConfig
from mvpseg.runs import SamplePositions, augmentation
from mvpseg.train import TrainConfig, TrainStep, train, training_vocabulary

MODEL = MVPSegConfig(num_prompts=2, num_context=4)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, tiny_rn: mvpseg.ClipBundle) -> tuple[Path, Path]:
    """A custom dataset whose classes have distinct colours (a learnable signal) and a tiny CLIP file."""
    folder = tmp_path_factory.mktemp("train")
    root = write_custom(folder / "data", num_train=8, num_val=2, size=(64, 64))
    weights = folder / "tiny-rn.safetensors"
    save_file(dict(tiny_rn.model.state_dict()), weights)
    return root, weights


def _config(setup: tuple[Path, Path], out: Path, **overrides) -> TrainConfig:
    root, weights = setup
    values = dict(dataset="custom", data_root=str(root), clip="test-tiny-rn", pretrained=str(weights), out=str(out),
                  model=MVPSegConfig(**vars(MODEL)), iters=6, batch_size=4, crop_size=48, lr=0.05,
                  optimizer="adamw", num_workers=0, log_every=1, checkpoint_every=3)
    values.update(overrides)
    return TrainConfig(**values)


def test_inductive_vocabulary_hides_unseen_classes(setup: tuple[Path, Path]) -> None:
    dataset = build_dataset("custom", setup[0], "train")
    assert dataset.info.class_names == ("sky", "grass", "red car", "tree") and dataset.info.unseen == (3,)
    names, label_map = training_vocabulary(dataset, transductive=False)
    assert names == ["sky", "grass", "red car"]
    assert label_map[[0, 1, 2, 3, 255]].tolist() == [0, 1, 2, 255, 255]
    names, label_map = training_vocabulary(dataset, transductive=True)
    assert names == ["sky", "grass", "red car", "tree"]
    assert label_map[[0, 1, 2, 3, 255]].tolist() == [0, 1, 2, 255, 255]  # unseen pixels stay unlabelled


def test_training_lowers_the_loss_and_writes_its_files(setup: tuple[Path, Path], tiny_rn: mvpseg.ClipBundle,
                                                       tmp_path: Path) -> None:
    config = _config(setup, tmp_path / "run", iters=30, crop_size=64, photometric=False, ratio_range=(1.0, 1.0),
                     scale=(64, 64), checkpoint_every=100)
    prompts = train(config, progress=False)
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.name != "tensorboard") == [
        "checkpoint.safetensors", "config.json", "log.csv", "prompts.safetensors"]
    with (tmp_path / "run" / "log.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == list(range(1, 31))
    # The loss on the training images, before and after, with the same frozen CLIP.
    dataset = build_dataset("custom", setup[0], "train")
    names, label_map = training_vocabulary(dataset, transductive=False)
    images, labels = zip(*(dataset.load(i) for i in range(len(dataset))))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255  # (B, H, W, 3) -> (B, 3, H, W)
    x = (x - torch.tensor(tiny_rn.mean).view(1, 3, 1, 1)) / torch.tensor(tiny_rn.std).view(1, 3, 1, 1)
    y = torch.from_numpy(label_map[np.stack(labels)])

    def loss(model: mvpseg.MVPSeg) -> dict[str, float]:
        with torch.no_grad():
            parts = total_loss(model(x, names), y, model.prompts.mean_contexts(), LossWeights())
        return {k: float(v) for k, v in parts.items()}

    before = loss(mvpseg.build_mvpseg(tiny_rn, MVPSegConfig(**vars(MODEL)), generator=torch.Generator().manual_seed(0)))
    after = loss(mvpseg.load_mvpseg(prompts, tiny_rn))
    assert after["loss"] < 0.8 * before["loss"]
    assert after["seg"] < 0.9 * before["seg"] and after["cls"] < before["cls"]


class _Killed(Exception):
    pass


def test_killed_and_resumed_run_ends_bit_for_bit_like_an_uninterrupted_one(setup: tuple[Path, Path],
                                                                          tmp_path: Path) -> None:
    whole = train(_config(setup, tmp_path / "whole"), progress=False)

    def kill_after_step_4(step: int, record: TrainStep) -> None:
        if step == 4:  # one step past the checkpoint at step 3: that step's work is lost, as in a crash
            raise _Killed

    config = _config(setup, tmp_path / "killed")
    with pytest.raises(_Killed):
        train(config, progress=False, on_step=kill_after_step_4)
    resumed = train(config, resume=True, progress=False)
    expected, got = load_file(whole), load_file(resumed)
    assert set(expected) == set(got)
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    with (tmp_path / "killed" / "log.csv").open() as handle:
        assert [int(r["step"]) for r in csv.DictReader(handle)] == [1, 2, 3, 4, 5, 6]


def test_a_run_with_the_view_terms_off_has_the_papers_loss_and_one_with_them_resumes_bit_for_bit(
        setup: tuple[Path, Path], tmp_path: Path) -> None:
    steps: list[TrainStep] = []
    plain = train(_config(setup, tmp_path / "plain", iters=3), progress=False,
                  on_step=lambda step, record: steps.append(record))
    assert [sorted(record.losses) for record in steps] == [["cls", "loss", "oc", "seg"]] * 3  # the paper's terms
    for record in steps:  # and the paper's sum (weights 1, 1, 1), nothing added
        terms = record.losses
        assert terms["loss"] == pytest.approx(terms["seg"] + terms["cls"] + terms["oc"], rel=1e-6, abs=0)
    with (tmp_path / "plain" / "log.csv").open() as handle:
        assert "views" not in next(csv.reader(handle))  # the paper's log columns only

    loss = LossWeights(views=1.0, views_epsilon=0.02, overlap=0.5, views_classes=("red car", "grass"))
    whole = train(_config(setup, tmp_path / "whole", loss=loss), progress=False)
    assert not all(torch.equal(a, b) for a, b in zip(load_file(plain).values(), load_file(whole).values()))

    def kill_after_step_4(step: int, record: TrainStep) -> None:
        if step == 4:
            raise _Killed

    config = _config(setup, tmp_path / "killed", loss=loss)
    with pytest.raises(_Killed):
        train(config, progress=False, on_step=kill_after_step_4)
    resumed = train(config, resume=True, progress=False)
    expected, got = load_file(whole), load_file(resumed)
    assert all(torch.equal(expected[name], got[name]) for name in expected)
    with (tmp_path / "killed" / "log.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(0.0 <= float(r["views_entropy"]) <= np.log(2) + 1e-6 and "overlap" in r for r in rows)
    with pytest.raises(CheckpointError, match="loss"):  # another weight: another run
        train(replace(config, loss=replace(loss, views=2.0)), resume=True, progress=False)


def test_resume_refuses_another_run(setup: tuple[Path, Path], tmp_path: Path) -> None:
    config = _config(setup, tmp_path / "run", iters=3)
    train(config, progress=False)
    with pytest.raises(CheckpointError, match=r"another run \(lr: checkpoint 0.05, now 0.1\)"):
        train(replace(config, lr=0.1), resume=True, progress=False)
    other = replace(config, model=replace(config.model, num_prompts=3))
    with pytest.raises(CheckpointError, match="model"):
        train(other, resume=True, progress=False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, config: TrainConfig, config_dir: str, port: int) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    open_clip.add_model_config(config_dir)
    try:
        train(config, progress=False)
    finally:
        distributed.cleanup()


def test_two_gloo_processes_equal_one_with_the_same_global_batch(setup: tuple[Path, Path], tmp_path: Path,
                                                                 tiny_configs: Path) -> None:
    single = train(_config(setup, tmp_path / "one", iters=4), progress=False)
    config = _config(setup, tmp_path / "two", iters=4)
    # fork: a spawned process would spend most of this test re-importing torch and open_clip
    mp.start_processes(_worker, args=(config, str(tiny_configs), _free_port()), nprocs=2, join=True,
                       start_method="fork")
    expected, got = load_file(single), load_file(tmp_path / "two" / "prompts.safetensors")
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=1e-5)
    assert not torch.equal(expected["prompts.contexts"],
                           mvpseg.build_mvpseg(mvpseg.load_clip("test-tiny-rn", config.pretrained),
                                               MVPSegConfig(**vars(MODEL)),
                                               generator=torch.Generator().manual_seed(0)).prompts.contexts)


def test_train_and_eval_from_the_command_line(setup: tuple[Path, Path], tmp_path: Path) -> None:
    import json

    from mvpseg.cli import main

    root, weights = setup
    out = tmp_path / "run"
    common = ["--data-root", str(root), "--clip", "test-tiny-rn", "--clip-weights", str(weights), "--quiet"]
    assert main(["train", "--dataset", "custom", *common, "--out", str(out), "--iters", "2", "--batch-size", "2",
                 "--crop-size", "32", "--num-prompts", "2", "--num-context", "3", "--oc-weight", "0",
                 "--num-workers", "0", "--optimizer", "adamw"]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"]["num_prompts"] == 2 and saved["loss"]["oc"] == 0.0 and saved["iters"] == 2
    assert main(["eval", "--dataset", "custom", *common, "--prompts", str(out / "prompts.safetensors"),
                 "--out", str(tmp_path / "eval"), "--short-side", "64"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert {"miou", "miou_seen", "miou_unseen", "hiou", "pixel_acc", "per_class"} <= set(metrics)
    assert set(metrics["per_class"]) == {"sky", "grass", "red car", "tree"}


def test_feature_cache_gives_the_losses_of_the_uncached_path(setup: tuple[Path, Path], tmp_path: Path) -> None:
    # 8 images, batch 4, 6 steps: 3 epochs, so a cache of 3 views holds exactly the views the
    # uncached path draws; the losses must agree up to the cache's fp16 rounding.
    plain = _config(setup, tmp_path / "plain", iters=6, checkpoint_every=6)
    cached = replace(plain, out=str(tmp_path / "cached"), feature_cache=str(tmp_path / "cache"), cache_views=3)
    train(plain, progress=False)
    train(cached, progress=False)
    assert (tmp_path / "cache" / "meta.json").is_file() and not (tmp_path / "cache.incomplete").exists()

    def losses(run: str) -> np.ndarray:
        with (tmp_path / run / "log.csv").open() as handle:
            return np.array([[float(r[k]) for k in ("loss", "seg", "cls", "oc")] for r in csv.DictReader(handle)])

    np.testing.assert_allclose(losses("cached"), losses("plain"), rtol=2e-3, atol=2e-4)
    # A cache made for another run is rebuilt, not silently reused.
    other = replace(cached, out=str(tmp_path / "other"), seed=1, iters=1)
    train(other, progress=False)
    assert json.loads((tmp_path / "cache" / "meta.json").read_text())["key"]["seed"] == 1
    # Other weights in the same file (same name and path: only the content differs) rebuild it too.
    copy = tmp_path / "weights.safetensors"
    state = load_file(other.pretrained)
    save_file(state, copy)
    train(replace(other, out=str(tmp_path / "other2"), pretrained=str(copy)), progress=False)
    before = json.loads((tmp_path / "cache" / "meta.json").read_text())["key"]
    save_file({k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}, copy)
    train(replace(other, out=str(tmp_path / "other3"), pretrained=str(copy)), progress=False)
    after = json.loads((tmp_path / "cache" / "meta.json").read_text())["key"]
    assert after["pretrained"] == before["pretrained"] == str(copy) and after["clip_weights"] != before["clip_weights"]


def test_transductive_training_never_teaches_gpr_that_unseen_classes_are_absent() -> None:
    from mvpseg.model import MVPSegOutput

    # Image 0 holds classes 0 and 1; image 1 holds class 0 only; class 2 (unseen) is never labelled.
    labels = torch.tensor([[[0, 1], [255, 255]], [[0, 0], [0, 255]]])
    logits = torch.tensor([[2.0, -1.0, 3.0], [0.5, 1.0, -2.0]], requires_grad=True)
    output = MVPSegOutput(fused_logits=torch.zeros(2, 3, 2, 2), presence_logits=logits, prompt_maps=torch.zeros(1))
    known = torch.tensor([True, True, False])
    loss = presence_loss(output, labels, known=known)
    targets = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, :2].detach(), targets)
    torch.testing.assert_close(loss, expected)  # the mean over the known classes only
    loss.backward()
    assert torch.equal(logits.grad[:, 2], torch.zeros(2)) and logits.grad[:, :2].abs().min() > 0


def test_transductive_run_trains_gpr_on_seen_classes_only(setup: tuple[Path, Path], tiny_rn: mvpseg.ClipBundle,
                                                          tmp_path: Path) -> None:
    def first_presence_loss(transductive: bool) -> float:
        steps: list[TrainStep] = []
        train(_config(setup, tmp_path / f"transductive={transductive}", iters=1, transductive=transductive),
              progress=False, on_step=lambda step, record: steps.append(record))
        return steps[0].losses["cls"]

    # Step 1's L_cls recomputed by hand: the initial prompts (seeded) on the run's first batch (same positions).
    config = _config(setup, tmp_path / "unused", transductive=True)
    dataset = build_dataset("custom", setup[0], "train", seed=config.seed)
    names, label_map = training_vocabulary(dataset, transductive=True)
    assert names == ["sky", "grass", "red car", "tree"]  # tree unseen: shown, its pixels unlabelled
    samples = SamplePositions(dataset, augmentation(config), label_map, config.seed)
    batch = [samples[i] for i in range(config.batch_size)]
    images = torch.stack([sample["image"] for sample in batch]).float() / 255  # (B, 3, H, W) in [0, 1]
    mean, std = tiny_rn.normalisation()
    labels = torch.stack([sample["label"] for sample in batch])
    model = mvpseg.build_mvpseg(tiny_rn, config.model, generator=torch.Generator().manual_seed(config.seed))
    with torch.no_grad():
        output = model((images - mean) / std, names)
        seen_only = float(presence_loss(output, labels, known=torch.tensor([True, True, True, False])))
        every_class = float(presence_loss(output, labels))  # tree's target would be "absent": it is never labelled
        inductive = float(presence_loss(model((images - mean) / std, names[:3]), labels))  # tree not shown
    assert abs(seen_only - every_class) > 1e-3  # the test can tell them apart
    assert first_presence_loss(transductive=True) == pytest.approx(seen_only, rel=1e-4)
    assert first_presence_loss(transductive=False) == pytest.approx(inductive, rel=1e-4)  # every class shown labelled


def test_a_phrase_initialised_run_resumes_from_the_same_command_line(setup: tuple[Path, Path], tmp_path: Path) -> None:
    from mvpseg.cli import main

    root, weights = setup
    command = ["train", "--dataset", "custom", "--data-root", str(root), "--clip", "test-tiny-rn", "--clip-weights",
               str(weights), "--out", str(tmp_path / "run"), "--iters", "4", "--checkpoint-every", "2",
               "--batch-size", "2", "--crop-size", "32", "--num-workers", "0", "--init-text", "a photo of a", "--quiet"]
    forwards = []

    def ctrl_c_in_step_3(module: torch.nn.Module, inputs: object, output: object) -> None:
        if isinstance(module, mvpseg.MVPSeg) and module.training:  # one forward of the prompts per step
            forwards.append(1)
            if len(forwards) == 3:
                raise KeyboardInterrupt

    hook = torch.nn.modules.module.register_module_forward_hook(ctrl_c_in_step_3)
    try:
        assert main(command) == 130  # stopped after the checkpoint at step 2
    finally:
        hook.remove()
    assert len(forwards) == 3
    assert main([*command, "--resume"]) == 0  # a fresh parse of the same command line resumes
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model"]["num_context"] is None and saved["model"]["init_text"] == "a photo of a"
    uninterrupted = tmp_path / "whole"
    assert main([*command[:-1], "--out", str(uninterrupted), "--quiet"]) == 0
    expected, got = load_file(uninterrupted / "prompts.safetensors"), load_file(tmp_path / "run" / "prompts.safetensors")
    assert all(torch.equal(expected[name], got[name]) for name in expected)


def test_training_says_how_many_images_it_found(setup: tuple[Path, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    train(_config(setup, tmp_path / "run", iters=1), progress=True)
    assert "custom train: 8 images (8 SegmentationClass); 4 classes, 1 unseen" in capsys.readouterr().out


def test_every_class_seen(setup: tuple[Path, Path], tmp_path: Path) -> None:
    """The cross-dataset protocol's prompts: trained on every class (no zero-shot split)."""
    import json
    import shutil

    from mvpseg.cli import main
    from mvpseg.data import build_dataset

    root, weights = setup
    root = Path(shutil.copytree(root, tmp_path / "data"))
    (root / "unseen.txt").write_text("tree\n")  # the dataset's own split, which "none" lifts
    assert build_dataset("custom", root, "train").info.unseen
    assert build_dataset("custom", root, "train", unseen_file="none").info.unseen == ()
    out = tmp_path / "run"
    assert main(["train", "--dataset", "custom", "--data-root", str(root), "--clip", "test-tiny-rn", "--clip-weights",
                 str(weights), "--quiet", "--out", str(out), "--iters", "1", "--batch-size", "2", "--crop-size", "32",
                 "--num-workers", "0", "--every-class-seen"]) == 0
    assert json.loads((out / "config.json").read_text())["every_class_seen"] is True
