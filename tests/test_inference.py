"""Segmenter: resizing, sliding windows, stitching, upsampling, image kinds, caching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import mvpseg
from mvpseg.image import ImageReadError, load_image
from mvpseg.inference import InferenceConfig, Segmenter, sliding_windows

NAMES = ["cat", "dog", "grass"]


def _segmenter(clip: mvpseg.ClipBundle, **options) -> Segmenter:
    config = mvpseg.MVPSegConfig(num_prompts=2, num_context=4)
    model = mvpseg.build_mvpseg(clip, config, generator=torch.Generator().manual_seed(0))
    return Segmenter(model, InferenceConfig(**options), device="cpu")


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_sliding_windows_cover_the_image_like_mmseg() -> None:
    boxes = sliding_windows(512, 1100, crop=512, stride=426)
    assert boxes == [(0, 512, 0, 512), (0, 512, 426, 938), (0, 512, 588, 1100)]
    assert sliding_windows(100, 200, crop=512, stride=426) == [(0, 100, 0, 200)]
    covered = np.zeros((700, 900), bool)
    for y0, y1, x0, x1 in sliding_windows(700, 900, 256, 200):
        assert y1 - y0 == 256 and x1 - x0 == 256
        covered[y0:y1, x0:x1] = True
    assert covered.all()


def test_labels_at_input_resolution_and_scores_agree(tiny_clip: mvpseg.ClipBundle) -> None:
    segmenter = _segmenter(tiny_clip, short_side=64, crop_size=64, stride=40)
    prediction = segmenter.predict(_image(50, 83), NAMES, return_scores=True)
    assert prediction.labels.shape == (50, 83) and prediction.labels.dtype == np.int32
    assert prediction.scores.shape == (3, 50, 83) and prediction.presence.shape == (3,)
    np.testing.assert_array_equal(prediction.labels, prediction.scores.argmax(0))
    assert prediction.scores.max() <= 1.0 and prediction.scores.sum(0).max() <= 1.0 + 1e-5
    assert sum(prediction.class_shares().values()) == pytest.approx(1.0)


def test_upsampling_in_row_blocks_equals_one_bilinear_resize(tiny_rn: mvpseg.ClipBundle) -> None:
    # No resizing and a size that is a multiple of the stride: the label map must be exactly the
    # bilinear upsampling of the log-scores computed in one piece by F.interpolate.
    segmenter = _segmenter(tiny_rn, short_side=None, mode="whole", upsample_rows=7)
    image = _image(64, 96)
    prediction = segmenter.predict(image, NAMES, return_scores=True)
    tensor = segmenter.resize(image)
    log_scores = segmenter.predict_torch(tensor, NAMES).final_logits()
    expected = F.interpolate(log_scores, size=(64, 96), mode="bilinear", align_corners=False)[0]
    np.testing.assert_allclose(prediction.scores, expected.exp().numpy(), atol=1e-5)
    np.testing.assert_array_equal(prediction.labels, expected.argmax(0).numpy())


def test_windows_are_stitched_by_averaging_on_the_feature_grid(tiny_rn: mvpseg.ClipBundle) -> None:
    segmenter = _segmenter(tiny_rn, short_side=None, crop_size=64, stride=32)
    images = segmenter.resize(_image(64, 96))
    stitched = segmenter.predict_torch(images, NAMES).prompt_maps[0]  # (P, C, 2, 3)
    model, text = segmenter.model, segmenter.text_embeddings(NAMES)
    with torch.no_grad():
        left = model.cosine_maps(model.features(images[..., :64]), text)[0]  # (P, C, 2, 2)
        right = model.cosine_maps(model.features(images[..., 32:]), text)[0]
    torch.testing.assert_close(stitched[..., 0], left[..., 0])
    torch.testing.assert_close(stitched[..., 1], (left[..., 1] + right[..., 0]) / 2)
    torch.testing.assert_close(stitched[..., 2], right[..., 1])


def test_one_window_equals_whole_image(tiny_vit: mvpseg.ClipBundle) -> None:
    image = _image(48, 72)
    slide = _segmenter(tiny_vit, short_side=None, crop_size=128, mode="slide").predict(image, NAMES, return_scores=True)
    whole = _segmenter(tiny_vit, short_side=None, mode="whole").predict(image, NAMES, return_scores=True)
    np.testing.assert_allclose(slide.scores, whole.scores, atol=1e-6)


def test_background_is_class_zero_and_text_is_cached(tiny_rn: mvpseg.ClipBundle) -> None:
    segmenter = _segmenter(tiny_rn, short_side=64)
    prediction = segmenter.predict(_image(64, 64), NAMES, background="background")
    assert prediction.class_names == ["background", *NAMES]
    assert prediction.labels.max() < 4
    first = segmenter.text_embeddings(NAMES)
    assert segmenter.text_embeddings(list(NAMES)) is first
    with pytest.raises(ValueError, match="duplicate"):
        segmenter.predict(_image(64, 64), ["cat", "cat"])


def test_window_plan_rounds_crop_down_and_stride_to_the_nearest_feature_step(tiny_rn: mvpseg.ClipBundle) -> None:
    # Feature step 32: crop 100 -> 96 (whole cells only); stride 56 -> 64 (nearest), never 32 (floored).
    segmenter = _segmenter(tiny_rn, crop_size=100, stride=56)
    assert segmenter.config.window_boxes(160, 224, segmenter.feature_stride) == sliding_windows(160, 224, crop=96, stride=64)
    assert InferenceConfig(crop_size=100, stride=40).window_boxes(160, 160, 32) == sliding_windows(160, 160, 96, 32)
    assert InferenceConfig(mode="whole").window_boxes(96, 128, 32) == [(0, 96, 0, 128)]


def _covered(boxes: list[tuple[int, int, int, int]], height: int, width: int) -> bool:
    counts = np.zeros((height, width), np.int32)
    for y0, y1, x0, x1 in boxes:
        counts[y0:y1, x0:x1] += 1
    return bool((counts > 0).all())


@pytest.mark.parametrize("crop", [128, 112, 512])
def test_the_default_stride_follows_the_crop_and_windows_leave_no_gap(tiny_rn: mvpseg.ClipBundle, crop: int) -> None:
    # A photo at short side 512 (683x512 padded to whole cells): larger than a 128-px crop both ways. The
    # fixed default stride of 426 left gaps there (0/0 stitched maps, NaN scores); 426/512 of the crop does not.
    segmenter = _segmenter(tiny_rn, crop_size=crop)
    assert segmenter.config.window_stride == round(crop * 426 / 512)
    boxes = segmenter.config.window_boxes(512, 704, segmenter.feature_stride)
    assert _covered(boxes, 512, 704)
    assert max(y1 - y0 for y0, y1, _, _ in boxes) <= crop
    # 112 = 3.5 cells: a stride rounded up to 4 cells would pass the 3-cell crop; it is capped at the crop.
    assert _covered(InferenceConfig(crop_size=112, stride=112).window_boxes(512, 704, 32), 512, 704)


def test_a_stride_above_the_crop_is_one_line_and_a_new_crop_drops_a_recorded_stride(tiny_rn: mvpseg.ClipBundle) -> None:
    from mvpseg.inference import with_overrides

    with pytest.raises(ValueError, match="stride 426 is larger than the crop 128") as error:
        InferenceConfig(crop_size=128, stride=426)
    assert "\n" not in str(error.value)
    recorded = InferenceConfig(short_side=512, crop_size=512, stride=426)  # as a checkpoint records them
    assert with_overrides(recorded, {"crop_size": 128}).window_stride == 106
    assert with_overrides(recorded, {"crop_size": 128, "stride": 64}).window_stride == 64
    segmenter = _segmenter(tiny_rn, short_side=512, crop_size=128)
    prediction = segmenter.predict(_image(375, 500), NAMES, return_scores=True)
    assert prediction.labels.shape == (375, 500) and np.isfinite(prediction.scores).all()


def test_window_batches_are_the_padded_images_windows(tiny_rn: mvpseg.ClipBundle) -> None:
    segmenter = _segmenter(tiny_rn, short_side=None, crop_size=64, stride=32, batch_size=2)
    images = torch.randn(2, 3, 70, 100)
    padded = segmenter._pad(images)
    assert padded.shape == (2, 3, 96, 128)
    torch.testing.assert_close(padded[..., :70, :100], images)
    assert padded[..., 70:, :].abs().sum() == 0 and padded[..., 100:].abs().sum() == 0
    seen = []
    for boxes, crops in segmenter._window_batches(padded):
        assert len(boxes) <= 2 and crops.shape == (2 * len(boxes), 3, 64, 64)
        for index, (y0, y1, x0, x1) in enumerate(boxes):  # window-major: the B images of a window together
            torch.testing.assert_close(crops[2 * index : 2 * index + 2], padded[:, :, y0:y1, x0:x1])
        seen += boxes
    assert seen == segmenter.config.window_boxes(96, 128, segmenter.feature_stride)


def test_text_embeddings_can_be_given_and_forgotten(tiny_rn: mvpseg.ClipBundle) -> None:
    segmenter = _segmenter(tiny_rn, short_side=64)
    given = torch.nn.functional.normalize(torch.randn(3, 3, 32), dim=-1)  # (P, C, D)
    segmenter.cache_text_embeddings(NAMES, given)
    torch.testing.assert_close(segmenter.text_embeddings(NAMES), given)
    maps = segmenter.predict_torch(segmenter.resize(_image(64, 64)), NAMES).prompt_maps
    features = segmenter.model.features(segmenter.resize(_image(64, 64)), tower=segmenter.tower, options=segmenter.config.dense)
    torch.testing.assert_close(maps, segmenter.model.cosine_maps(features, given))  # the given ones are used
    segmenter.clear_text_cache()
    with torch.no_grad():
        torch.testing.assert_close(segmenter.text_embeddings(NAMES), segmenter.model.text_embeddings(NAMES))
    with pytest.raises(ValueError, match=r"\(P, 3, D\)"):
        segmenter.cache_text_embeddings(NAMES, given[:, :2])


def test_template_baseline_segmenter(tiny_rn: mvpseg.ClipBundle) -> None:
    segmenter = Segmenter(mvpseg.build_mvpseg(tiny_rn, None), InferenceConfig(short_side=64))
    prediction = segmenter.predict(_image(40, 70), NAMES)
    assert prediction.presence is None and prediction.labels.shape == (40, 70)


def test_image_kinds(tmp_path: Path) -> None:
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[0, 0, 3] = 255  # one opaque red pixel, the rest transparent -> white
    out = load_image(Image.fromarray(rgba, "RGBA"))
    assert out.shape == (4, 5, 3) and tuple(out[0, 0]) == (200, 0, 0) and tuple(out[1, 1]) == (255, 255, 255)
    grey = load_image(Image.fromarray(np.full((3, 3), 77, np.uint8), "L"))
    assert grey.shape == (3, 3, 3) and (grey == 77).all()
    deep = Image.fromarray(np.full((3, 3), 65535, np.uint16))
    assert deep.mode.startswith("I;16")
    assert (load_image(deep) == 255).all()
    palette = Image.fromarray(np.zeros((2, 2), np.uint8), "P")
    palette.putpalette([10, 20, 30] * 256)
    assert tuple(load_image(palette)[0, 0]) == (10, 20, 30)
    assert load_image(np.zeros((6, 7), np.uint8)).shape == (6, 7, 3)
    assert (load_image(np.ones((2, 2, 3), np.float32)) == 255).all()
    # EXIF orientation 6 (rotate 90 degrees clockwise): a 10x20 file is seen as 20x10.
    photo = Image.fromarray(_image(10, 20))
    exif = photo.getexif()
    exif[0x0112] = 6
    photo.save(tmp_path / "rotated.jpg", exif=exif)
    assert load_image(tmp_path / "rotated.jpg").shape == (20, 10, 3)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(ImageReadError, match="broken.jpg: not a readable image"):
        load_image(tmp_path / "broken.jpg")
    with pytest.raises(ImageReadError, match="no such file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageReadError, match="channels"):
        load_image(np.zeros((2, 2, 5), np.uint8))


def test_palettes() -> None:
    from mvpseg.viz import colorize, palette, voc_palette

    colors = voc_palette()
    assert colors[0].tolist() == [0, 0, 0] and colors[1].tolist() == [128, 0, 0] and colors[15].tolist() == [192, 128, 128]
    shown = palette()
    assert shown[0].tolist() == [128, 0, 0] and shown[255].tolist() == [255, 255, 255]
    image = colorize(np.array([[0, 3]], np.int32))
    assert image.mode == "P" and np.asarray(image).tolist() == [[0, 3]]


# --- synonyms and the background threshold -----------------------------------------------------------


def test_a_class_scores_as_the_best_of_its_names(tiny_rn: mvpseg.ClipBundle) -> None:
    segmenter = _segmenter(tiny_rn, short_side=64)
    image = segmenter.resize(_image(64, 96))
    names = segmenter.predict_torch(image, ["cat", "kitten", "dog", "grass", "lawn"])
    classes = segmenter.predict_torch(image, [("cat", "kitten"), "dog", ["grass", "lawn"]])
    for got, each, dim in ((classes.fused_logits, names.fused_logits, 1),
                           (classes.presence_logits, names.presence_logits, 1),
                           (classes.prompt_maps, names.prompt_maps, 2)):
        assert got.shape[dim] == 3
        parts = each.split([2, 1, 2], dim=dim)
        torch.testing.assert_close(got, torch.cat([part.amax(dim=dim, keepdim=True) for part in parts], dim=dim))
    prediction = segmenter.predict(_image(64, 96), [("cat", "kitten"), "dog", ["grass", "lawn"]],
                                   background=("background", "sky"), return_scores=True)
    assert prediction.class_names == ["background", "cat", "dog", "grass"]
    assert prediction.scores.shape[0] == 4 and prediction.presence.shape == (4,)
    # Every name went through the text tower once, cached under the list of names.
    assert segmenter.text_embeddings(["background", "sky", "cat", "kitten", "dog", "grass", "lawn"]).shape[1] == 7


def test_synonyms_use_the_cached_embeddings_of_their_names(tiny_rn: mvpseg.ClipBundle) -> None:
    segmenter = _segmenter(tiny_rn, short_side=64)
    given = F.normalize(torch.randn(3, 3, 32), dim=-1)  # (P, names, D)
    segmenter.cache_text_embeddings(["tv", "television", "cat"], given)
    image = segmenter.resize(_image(64, 64))
    maps = segmenter.predict_torch(image, [("tv", "television"), "cat"]).prompt_maps  # (1, P, 2, h, w)
    cosine = segmenter.model.cosine_maps(segmenter.model.features(image, tower=segmenter.tower, options=segmenter.config.dense), given)  # (1, P, 3, h, w)
    torch.testing.assert_close(maps[:, :, 0], cosine[:, :, :2].amax(dim=2))
    torch.testing.assert_close(maps[:, :, 1], cosine[:, :, 2])


def test_background_threshold_turns_low_scores_into_class_zero(tiny_vit: mvpseg.ClipBundle) -> None:
    segmenter = _segmenter(tiny_vit, short_side=None, mode="whole")  # its random weights give every class pixels
    image = _image(50, 83)
    plain = segmenter.predict(image, NAMES, background="background", return_scores=True)
    best = plain.scores.max(axis=0)
    values = np.unique(best[plain.labels != 0])
    threshold = float((values[len(values) // 2] + values[len(values) // 2 + 1]) / 2)  # between two pixel scores
    cut = segmenter.predict(image, NAMES, background="background", background_threshold=threshold)
    np.testing.assert_array_equal(cut.labels, np.where(best < threshold, 0, plain.labels))
    assert (plain.labels == 0).sum() < (cut.labels == 0).sum() < cut.labels.size
    off = segmenter.predict(image, NAMES, background="background", background_threshold=0.0)
    np.testing.assert_array_equal(off.labels, plain.labels)
    assert (segmenter.predict(image, NAMES, background="bg", background_threshold=1.0).labels == 0).all()
    with pytest.raises(ValueError, match="needs a background"):
        segmenter.predict(image, NAMES, background_threshold=0.5)
    with pytest.raises(ValueError, match="between 0 and 1"):
        segmenter.predict(image, NAMES, background="bg", background_threshold=1.5)


def test_label_log_scores_are_the_upsampled_value_of_each_label() -> None:
    from mvpseg.upsample import label_log_scores

    log_scores = torch.randn(5, 4, 6)
    labels = torch.randint(0, 5, (37, 53), dtype=torch.int32)
    expected = F.interpolate(log_scores[None], size=(37, 53), mode="bilinear", align_corners=False)[0]
    got = label_log_scores(log_scores, labels, (4 / 37, 6 / 53), rows=5)
    torch.testing.assert_close(got, expected.gather(0, labels.long()[None])[0])


def test_long_side_resize_is_mmseg_keep_ratio(tiny_rn: mvpseg.ClipBundle) -> None:
    # mmseg's img_scale=(520, 520) with keep_ratio: factor 520 / long side, sizes int(x * s + 0.5).
    segmenter = _segmenter(tiny_rn, long_side=520, short_side=300)  # long_side wins over short_side
    assert segmenter.resize(_image(375, 500)).shape == (1, 3, 390, 520)
    assert segmenter.resize(_image(500, 375)).shape == (1, 3, 520, 390)
    assert segmenter.resize(_image(100, 40)).shape == (1, 3, 520, 208)  # small images are enlarged
    # Half-way sizes round up (333 * 0.5 = 166.5 -> 167), where Python's round() would give 166.
    assert segmenter.resize(_image(333, 1040)).shape == (1, 3, 167, 520)
    assert _segmenter(tiny_rn, long_side=None, short_side=64).resize(_image(64, 100)).shape == (1, 3, 64, 100)


def test_context60_evaluation_preset() -> None:
    from mvpseg.evaluate import inference_preset

    config = inference_preset("context-60")
    assert (config.long_side, config.mode) == (520, "whole")
    assert InferenceConfig(long_side=0).long_side is None
    with pytest.raises(ValueError, match="long_side"):
        InferenceConfig(long_side=-1)
