"""mvpseg.integrations.ray: the callable class without Ray, then on a real local Ray cluster."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import save_file

import mvpseg
from mvpseg.cli import main
from mvpseg.integrations.ray import SegmentBatch, image_rows


def _photos(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        array = np.random.default_rng(index).integers(0, 256, (40 + 8 * index, 56, 3), dtype=np.uint8)
        Image.fromarray(array).save(folder / f"img{index}.png")
    return sorted(folder.glob("*.png"))


def test_the_callable_writes_what_segment_writes(tiny_vit: mvpseg.ClipBundle, tmp_path: Path) -> None:
    weights = tmp_path / "tiny-vit.safetensors"
    save_file(dict(tiny_vit.model.state_dict()), weights)
    photos = _photos(tmp_path / "photos", 3)
    (tmp_path / "photos" / "broken.png").write_bytes(b"\x89PNG not really")
    flags = ["--clip", "test-tiny-vit", "--clip-weights", str(weights), "--short-side", "64", "--mode", "whole",
             "--device", "cpu", "--quiet"]
    assert main(["segment", str(tmp_path / "photos"), "--classes", "cat,dog|puppy", "--background", "sky",
                 "--out", str(tmp_path / "cli"), *flags]) == 1  # the broken image
    segment = SegmentBatch(["cat", ("dog", "puppy")], background="sky", clip="test-tiny-vit", pretrained=str(weights),
                           device="cpu", inference={"short_side": 64, "mode": "whole"}, out=tmp_path / "ray")
    rows = image_rows([str(tmp_path / "photos")])
    assert [row["name"] for row in rows] == ["broken", "img0", "img1", "img2"]
    batch = {key: np.asarray([row[key] for row in rows]) for key in ("path", "name")}
    result = segment(batch)
    assert result["status"][0].startswith("failed: ") and list(result["status"][1:]) == ["done"] * 3
    assert segment.class_names == ["sky", "cat", "dog"] and result["shares"].shape == (4, 3)
    assert np.isnan(result["shares"][0]).all() and np.allclose(result["shares"][1:].sum(axis=1), 1.0)
    files = {path.name: path.read_bytes() for path in (tmp_path / "cli").iterdir()}
    assert {path.name: path.read_bytes() for path in (tmp_path / "ray").iterdir()} == files
    for labels, photo in zip(result["labels"][1:], photos):
        np.testing.assert_array_equal(labels, np.asarray(Image.open(tmp_path / "cli" / f"{photo.stem}.png")))
    # Bytes beside their rows' names; whole files made the same way are skipped.
    again = SegmentBatch(["cat", ("dog", "puppy")], background="sky", clip="test-tiny-vit", pretrained=str(weights),
                         device="cpu", inference={"short_side": 64, "mode": "whole"}, out=tmp_path / "ray",
                         skip_existing=True, with_labels=False)
    (tmp_path / "ray" / "img1.json").unlink()
    result = again({"bytes": np.asarray([photo.read_bytes() for photo in photos], dtype=object),
                    "path": np.asarray([str(photo) for photo in photos]),
                    "name": np.asarray([photo.stem for photo in photos])})
    assert list(result["status"]) == ["skipped", "done", "skipped"] and "labels" not in result
    assert {path.name: path.read_bytes() for path in (tmp_path / "ray").iterdir()} == files


def test_the_callable_takes_the_vit_mode_and_redoes_outputs_of_another(tiny_vit: mvpseg.ClipBundle,
                                                                        tmp_path: Path) -> None:
    weights = tmp_path / "tiny-vit.safetensors"
    save_file(dict(tiny_vit.model.state_dict()), weights)
    photos = _photos(tmp_path / "photos", 1)
    rows = {"path": np.asarray([str(photos[0])]), "name": np.asarray([photos[0].stem])}
    common = dict(clip="test-tiny-vit", pretrained=str(weights), device="cpu", out=tmp_path / "ray",
                  inference={"short_side": 64, "mode": "whole"}, skip_existing=True)
    naclip = SegmentBatch(["cat", "dog"], vit_mode="naclip", **common)
    assert naclip.segmenter.model.config.vit_mode == "naclip"
    assert list(naclip(rows)["status"]) == ["done"]
    assert list(SegmentBatch(["cat", "dog"], vit_mode="naclip", **common)(rows)["status"]) == ["skipped"]
    assert list(SegmentBatch(["cat", "dog"], vit_mode="qq", **common)(rows)["status"]) == ["done"]


def test_names_are_unique_over_the_whole_dataset_and_those_of_segment(tiny_vit: mvpseg.ClipBundle,
                                                                        tmp_path: Path) -> None:
    weights = tmp_path / "tiny-vit.safetensors"
    save_file(dict(tiny_vit.model.state_dict()), weights)
    first, second = _photos(tmp_path / "a", 1)[0], _photos(tmp_path / "b", 2)[1]
    second = second.rename(tmp_path / "b" / first.name)  # a/img0.png and b/img0.png
    flags = ["--clip", "test-tiny-vit", "--clip-weights", str(weights), "--short-side", "64", "--mode", "whole",
             "--device", "cpu", "--quiet", "--classes", "cat,dog"]
    assert main(["segment", str(first), str(second), "--out", str(tmp_path / "cli"), *flags]) == 0
    segment = SegmentBatch(["cat", "dog"], clip="test-tiny-vit", pretrained=str(weights), device="cpu",
                           inference={"short_side": 64, "mode": "whole"}, out=tmp_path / "ray", with_labels=False)
    rows = image_rows([str(first), str(second)])
    for row in rows:  # one row per batch, as Ray may hand them to two actors
        result = segment({key: np.asarray([value]) for key, value in row.items()})
        assert list(result["status"]) == ["done"]
    files = {path.name: path.read_bytes() for path in (tmp_path / "cli").iterdir()}
    assert sorted(files) == ["img0-2.json", "img0-2.png", "img0-2_overlay.png", "img0.json", "img0.png",
                             "img0_overlay.png"]
    assert {path.name: path.read_bytes() for path in (tmp_path / "ray").iterdir()} == files
    with pytest.raises(ValueError, match="needs a 'name' column") as error:  # names a batch cannot decide
        segment({"path": np.asarray([str(first), str(second)])})
    assert "\n" not in str(error.value)
    # Without out, rows of bytes alone get names of their own in every batch (not image-0 in each).
    plain = SegmentBatch(["cat", "dog"], clip="test-tiny-vit", pretrained=str(weights), device="cpu",
                         inference={"short_side": 64, "mode": "whole"}, with_labels=False)
    names = [plain({"bytes": np.asarray([path.read_bytes()], dtype=object)})["name"][0] for path in (first, second)]
    assert len(set(names)) == 2


def test_a_local_ray_cluster_segments_like_the_segmenter(tmp_path: Path) -> None:
    """Ray Data with one CPU actor on a real local cluster (two CPUs), the shipped tiny CLIP and world prompts.
    Skipped without ray (pip install -e ".[ray]"), unless MVPSEG_REQUIRE_RAY=1 (CI) makes that a failure."""
    if os.environ.get("MVPSEG_REQUIRE_RAY") == "1":
        import ray
    else:
        ray = pytest.importorskip("ray")
    from mvpseg.world.patterns import CLASS_NAMES, generate_scene, scene_rng
    from mvpseg.world.prompts_asset import WORLD_PROMPTS

    folder = tmp_path / "world"
    folder.mkdir()
    for index in range(4):
        Image.fromarray(generate_scene(scene_rng(1, 1, index)).image).save(folder / f"scene{index}.png")
    classes = list(CLASS_NAMES)
    kwargs = {"classes": classes, "prompts": str(WORLD_PROMPTS), "device": "cpu", "out": str(tmp_path / "out")}
    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        dataset = ray.data.from_items(image_rows([str(folder)]), override_num_blocks=2).map_batches(
            SegmentBatch, batch_size=2, fn_constructor_kwargs=kwargs,
            compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1)
        rows = sorted(dataset.take_all(), key=lambda row: row["name"])
    finally:
        ray.shutdown()
    print(f"\nray: {time.perf_counter() - start:.1f} s for start, 4 images and shutdown")
    segmenter = mvpseg.Segmenter.from_pretrained(prompts=WORLD_PROMPTS, device="cpu")
    assert [row["name"] for row in rows] == [f"scene{index}" for index in range(4)]
    for row in rows:
        expected = segmenter.predict(row["path"], classes)
        assert row["status"] == "done"
        np.testing.assert_array_equal(row["labels"], expected.labels)
        np.testing.assert_allclose(row["shares"], list(expected.class_shares().values()), rtol=1e-6)
        assert Image.open(io.BytesIO((tmp_path / "out" / f"{row['name']}.png").read_bytes())).size == (128, 128)
