"""The synthetic world: masks match the drawing, determinism, the written layout, the pretrain script."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from mvpseg.data import read_label
from mvpseg.world.layout import write_world
from mvpseg.world.patterns import (
    CLASS_NAMES,
    STUFF_CLASSES,
    THING_CLASSES,
    UNSEEN_CLASSES,
    Thing,
    caption,
    generate_scene,
    render,
    sample_spec,
    scene_rng,
    twin_spec,
)
from mvpseg.world.pretrain import build_tiny_clip
from mvpseg.world.pretrain import main as pretrain_main


def test_every_world_declares_the_registry_interface() -> None:
    """Each world of WORLDS has every name the registry's docstring lists, HAS_PARTS a bool, and HAS_PARTS
    true exactly where the world has part kinds and its scenes carry part masks."""
    from mvpseg.world import registry
    from mvpseg.world.registry import INTERFACE, PARTS_INTERFACE, WORLDS, get_world

    assert set(WORLDS) == {"patterns", "parts"}
    for name in INTERFACE + PARTS_INTERFACE:
        assert f"``{name}" in registry.__doc__, name  # the docstring lists the interface
    for name in WORLDS:
        module = get_world(name)
        missing = [attr for attr in INTERFACE if not hasattr(module, attr)]
        assert not missing, (name, missing)
        assert isinstance(module.HAS_PARTS, bool), name
        assert module.HAS_PARTS == hasattr(module, "PART_KINDS"), name
        assert module.HAS_PARTS == all(hasattr(module, attr) for attr in PARTS_INTERFACE), name
        scene = module.generate_scene(module.scene_rng(0, 0, 0))
        assert (scene.parts is not None) == module.HAS_PARTS, name
        assert scene.image.shape[:2] == (module.IMAGE_SIZE,) * 2
    assert get_world("patterns").HAS_PARTS is False and get_world("parts").HAS_PARTS is True


def test_class_lists() -> None:
    assert len(THING_CLASSES) >= 12 and len(STUFF_CLASSES) >= 4
    assert len(set(CLASS_NAMES)) == len(CLASS_NAMES)
    assert set(UNSEEN_CLASSES) <= set(CLASS_NAMES)
    assert set(UNSEEN_CLASSES) & set(THING_CLASSES) and set(UNSEEN_CLASSES) & set(STUFF_CLASSES)


def test_one_thing_mask_is_the_drawn_disc() -> None:
    """A circular thing (no harmonics) of radius 20 covers pi * 20^2 pixels, all labelled with its class."""
    spec = sample_spec(np.random.default_rng(0))
    disc = Thing(label=2, center=(64.0, 64.0), radius=20.0, harmonics=((0.0, 0.0),) * 3, angle=0.3,
                 period=8.0, colors=((255, 0, 0), (0, 0, 255)), offset=(0.0, 0.0))
    spec = dataclasses.replace(spec, things=(disc,), noise=0.0, stuff=(len(THING_CLASSES),))
    image, label = render(spec)
    assert abs(int((label == 2).sum()) - np.pi * 20**2) < 2 * np.pi * 20  # within one pixel ring
    assert int((label == len(THING_CLASSES)).sum()) == label.size - int((label == 2).sum())
    # inside the disc only the thing's two colours appear, and both do
    colors = {tuple(c) for c in image[label == 2]}
    assert colors == {(255, 0, 0), (0, 0, 255)}
    yy, xx = np.mgrid[0:128, 0:128]
    assert np.all(label[(yy - 64) ** 2 + (xx - 64) ** 2 < 19**2] == 2)


def test_later_things_occlude_earlier_ones() -> None:
    spec = sample_spec(np.random.default_rng(1))
    base = dict(harmonics=((0.0, 0.0),) * 3, angle=0.0, period=8.0, colors=((255, 255, 255), (0, 0, 0)),
                offset=(0.0, 0.0))
    below = Thing(label=0, center=(64.0, 50.0), radius=20.0, **base)
    above = Thing(label=1, center=(64.0, 70.0), radius=20.0, **base)
    _, label = render(dataclasses.replace(spec, things=(below, above)))
    assert label[64, 70] == 1 and label[64, 58] == 1 and label[64, 40] == 0
    assert abs(int((label == 1).sum()) - np.pi * 20**2) < 2 * np.pi * 20


def test_scenes_are_deterministic_and_seeds_differ() -> None:
    a, b = generate_scene(scene_rng(7, 0, 3)), generate_scene(scene_rng(7, 0, 3))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label) and a.caption == b.caption
    c = generate_scene(scene_rng(8, 0, 3))
    assert not np.array_equal(a.image, c.image)
    assert a.image.shape == (128, 128, 3) and a.image.dtype == np.uint8 and a.label.dtype == np.uint8
    assert a.label.max() < len(CLASS_NAMES)


def test_caption_names_the_visible_things() -> None:
    for index in range(20):
        scene = generate_scene(scene_rng(0, 0, index))
        counts = np.bincount(scene.label.ravel(), minlength=len(CLASS_NAMES))
        words = set(re.findall(r"[a-z]+", scene.caption))
        for c, name in enumerate(THING_CLASSES):
            if counts[c] >= 0.015 * scene.label.size:
                assert name in words, (scene.caption, name)
            if counts[c] == 0:
                assert name not in words, (scene.caption, name)


def test_twin_changes_one_thing_only() -> None:
    rng = np.random.default_rng(3)
    spec = sample_spec(rng)
    twin = twin_spec(spec, rng)
    changed = [(a.label, b.label) for a, b in zip(spec.things, twin.things) if a.label != b.label]
    assert len(changed) == 1 and changed[0][1] not in {t.label for t in spec.things}
    (_, label_a), (_, label_b) = render(spec), render(twin)
    assert np.array_equal(label_a == changed[0][0], label_b == changed[0][1])


def test_stuff_twin_changes_the_stuff_only() -> None:
    rng = np.random.default_rng(4)
    spec = sample_spec(rng)
    twin = twin_spec(spec, rng, swap="stuff")
    assert twin.things == spec.things and len(twin.stuff) == len(spec.stuff)
    assert not set(twin.stuff) & set(spec.stuff)
    (_, label_a), (_, label_b) = render(spec), render(twin)
    things = label_a < len(THING_CLASSES)
    assert np.array_equal(label_a[things], label_b[things]) and np.array_equal(things, label_b < len(THING_CLASSES))
    for old, new in zip(spec.stuff, twin.stuff):  # each background region keeps its place, with the new kind
        assert np.array_equal(label_a == old, label_b == new)
    with pytest.raises(ValueError, match="swap"):
        twin_spec(spec, rng, swap="colour")


def test_stuff_only_caption_names_the_stuff_alone() -> None:
    for index in range(10):
        scene = generate_scene(scene_rng(0, 0, index))
        counts = np.bincount(scene.label.ravel(), minlength=len(CLASS_NAMES))
        words = set(re.findall(r"[a-z]+", caption(scene.label, np.random.default_rng(index), stuff_only=True)))
        assert not words & set(THING_CLASSES)
        named = {name for c, name in enumerate(CLASS_NAMES) if c >= len(THING_CLASSES) and counts[c] >= 0.1 * counts.sum()}
        assert named and named <= words and not (set(STUFF_CLASSES) - named) & words


def test_write_world_layout(tmp_path) -> None:
    root = write_world(tmp_path / "world", num_train=3, num_val=2, seed=5, progress=False)
    assert (root / "class_names.txt").read_text().split("\n")[:-1] == list(CLASS_NAMES)
    assert (root / "unseen.txt").read_text().split("\n")[:-1] == list(UNSEEN_CLASSES)
    ids = {}
    for split, count in (("train", 3), ("val", 2)):
        ids[split] = (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
        assert len(ids[split]) == count
        for image_id in ids[split]:
            image = Image.open(root / "JPEGImages" / f"{image_id}.png")
            mask = Image.open(root / "SegmentationClass" / f"{image_id}.png")
            assert image.mode == "RGB" and image.size == (128, 128)
            assert mask.mode == "P" and mask.size == (128, 128)
    scene = generate_scene(scene_rng(5, 1, 1))
    assert np.array_equal(read_label(root / "SegmentationClass" / f"{ids['val'][1]}.png"), scene.label)
    assert np.array_equal(np.asarray(Image.open(root / "JPEGImages" / f"{ids['val'][1]}.png")), scene.image)


def test_pretrain_phases_write_loadable_weights(tmp_path) -> None:
    out = tmp_path / "clip"
    pretrain_main(["--out", str(out), "--steps", "3", "--batch-size", "4", "--pool", "8", "--warmup", "1",
                   "--curriculum-steps", "1", "--stuff-only-fraction", "0.5", "--stuff-twin-fraction", "0.5",
                   "--log-every", "1", "--no-progress"])
    state = load_file(str(out / "mvpseg-tiny.safetensors"))
    model = build_tiny_clip()
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
    assert not torch.equal(model.logit_scale.detach(), torch.tensor(np.log(1 / 0.07), dtype=torch.float32))
    log = (out / "pretrain_log.csv").read_text().splitlines()
    assert log[0].startswith("step,loss") and len(log) == 4
    tokens = open_clip.get_tokenizer("mvpseg-tiny")(["stripes on grass."])
    with torch.no_grad():
        assert model.encode_text(tokens).shape == (1, 128)


@pytest.mark.parametrize("size", [96])
def test_other_image_sizes(size: int) -> None:
    scene = generate_scene(scene_rng(0, 0, 0), size=size)
    assert scene.image.shape == (size, size, 3) and scene.label.shape == (size, size)


def test_shipped_tiny_clip_loads_and_beats_chance() -> None:
    import torch

    import mvpseg
    from mvpseg.world.evaluate import evaluate_tiny_clip

    torch.manual_seed(0)
    clip = mvpseg.load_clip("mvpseg-tiny", "mvpseg")
    assert clip.image_size == 128 and not clip.model.training
    result = evaluate_tiny_clip(clip.model, clip.tokenizer, num_images=96, num_probe_images=8, probe_steps=1)
    # presence AUC of the 12 things (chance: 0.5) on held-out world images, unseen things included
    assert result["summary"]["thing_auc"] > 0.75
    assert result["summary"]["thing_auc_unseen"] > 0.70
    assert result["summary"]["stuff_top1"] > 0.5  # 4 stuff kinds: chance 0.25


def test_pool_twins_change_stuff_or_a_thing() -> None:
    from mvpseg.world.pool import draw_pool, is_stuff_twin

    _, counts, pairs = draw_pool(0, 64, 16, twin_fraction=1.0, workers=1, progress=False, stuff_twin_fraction=0.5)
    assert pairs == 8
    kinds = []
    for k in range(pairs):
        a, b = counts[2 * k], counts[2 * k + 1]
        things_equal = np.array_equal(a[: len(THING_CLASSES)], b[: len(THING_CLASSES)])
        kinds.append(is_stuff_twin(0, k, 0.5))
        assert things_equal == kinds[-1]  # a stuff twin keeps every thing's pixels; a thing twin changes one
        if kinds[-1]:
            assert not set(np.flatnonzero(a[len(THING_CLASSES):])) & set(np.flatnonzero(b[len(THING_CLASSES):]))
    assert any(kinds) and not all(kinds)
