"""The memory bound of upsampling, the pruned label search, and the folded inference tower."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mvpseg
import mvpseg.upsample as upsample
from mvpseg.inference import InferenceConfig, Segmenter
from mvpseg.tower import fold_batchnorm
from mvpseg.upsample import UpsampleStats, upsample_log_scores

NAMES = ["cat", "dog", "grass", "sky", "road"]


def _segmenter(clip: mvpseg.ClipBundle, **options) -> Segmenter:
    config = mvpseg.MVPSegConfig(num_prompts=2, num_context=4)
    model = mvpseg.build_mvpseg(clip, config, generator=torch.Generator().manual_seed(0))
    return Segmenter(model, InferenceConfig(**options), device="cpu")


def _regions(num_classes: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Log-scores with region structure: each class peaks around its own centre, plus noise."""
    generator = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(height).float(), torch.arange(width).float(), indexing="ij")
    centres = torch.rand(num_classes, 2, generator=generator) * torch.tensor([height, width])
    distance = (ys[None] - centres[:, 0, None, None]) ** 2 + (xs[None] - centres[:, 1, None, None]) ** 2
    return -distance / 4 + 0.3 * torch.randn(num_classes, height, width, generator=generator)


def test_block_rows_respects_the_budget() -> None:
    for width in (1, 37, 512, 4096, 100_000):
        for budget in (1.0, 1e4, 64 * 2**20):
            rows = upsample.block_rows(width, budget)
            assert rows >= 1
            assert rows == 1 or rows * width * 4 * upsample._LIVE_ROWS <= budget
            assert (rows + 1) * width * 4 * upsample._LIVE_ROWS > budget  # as many rows as fit
    assert upsample.block_rows(4096, 64 * 2**20, rows=7) == 7


@pytest.mark.parametrize("prune", [True, False])
def test_upsampling_blocks_stay_within_budget_and_give_the_unchunked_labels(prune: bool) -> None:
    log_scores = _regions(30, 6, 9)
    size, cells_per_pixel = (150, 211), (6 / 150, 9 / 211)
    budget = 20_000  # bytes: a few rows of 211 pixels
    stats = UpsampleStats()
    labels, scores = upsample_log_scores(log_scores, size, cells_per_pixel, budget_bytes=budget, prune=prune,
                                         stats=stats)
    assert scores is None and stats.class_blocks > 0
    # Every block holds one class's rows: nothing of shape (C, H, W), nor (C, rows, W).
    assert len(stats.largest_block) == 2 and 1 < stats.largest_block[0] < 150
    assert stats.block_bytes == stats.largest_block[0] * stats.largest_block[1] * 4 * upsample._LIVE_ROWS <= budget
    if prune:  # the classes that cannot win are skipped: far fewer values than every class at every pixel
        assert stats.values < 0.25 * 30 * 150 * 211
    else:
        assert stats.values == 30 * 150 * 211
    expected = F.interpolate(log_scores[None], size=size, mode="bilinear", align_corners=False)[0].argmax(0)
    np.testing.assert_array_equal(labels.numpy(), expected.int().numpy())


def test_pruned_labels_equal_every_class_labels_with_ties() -> None:
    log_scores = _regions(40, 7, 5, seed=1)
    log_scores[7] = log_scores[3]  # exact ties: the lower class index must win, as argmax does
    log_scores[12, 2:4] = log_scores[:, 2:4].amax(0)  # a class tied with the best over two cell rows
    for size in ((61, 47), (7, 5), (300, 13)):
        cells_per_pixel = (7 / size[0], 5 / size[1])
        pruned, _ = upsample_log_scores(log_scores, size, cells_per_pixel)
        every, _ = upsample_log_scores(log_scores, size, cells_per_pixel, prune=False, rows=1)
        assert torch.equal(pruned, every)
        with_scores, scores = upsample_log_scores(log_scores, size, cells_per_pixel, with_scores=True)
        assert torch.equal(with_scores, every)
        assert scores is not None and torch.equal(scores.argmax(0).int(), every)


def test_predict_labels_match_one_full_resolution_argmax(tiny_rn: mvpseg.ClipBundle) -> None:
    # A small budget forces one-row blocks; the labels must not change.
    image = np.random.default_rng(3).integers(0, 256, (96, 160, 3), dtype=np.uint8)
    small = _segmenter(tiny_rn, short_side=None, mode="whole", upsample_budget_mib=1e-3).predict(image, NAMES)
    large = _segmenter(tiny_rn, short_side=None, mode="whole").predict(image, NAMES, return_scores=True)
    np.testing.assert_array_equal(small.labels, large.labels)
    np.testing.assert_array_equal(large.labels, large.scores.argmax(0))


def test_folded_tower_gives_the_same_features(tiny_rn: mvpseg.ClipBundle) -> None:
    visual = tiny_rn.model.visual
    generator = torch.Generator().manual_seed(0)
    saved = {name: buffer.clone() for name, buffer in visual.state_dict().items()}
    try:
        for module in visual.modules():  # non-trivial statistics, as a trained tower has
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
                module.weight.data.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                module.bias.data.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
        folded = fold_batchnorm(visual)
        assert not any(isinstance(module, nn.BatchNorm2d) for module in folded.modules())
        assert any(isinstance(module, nn.BatchNorm2d) for module in visual.modules())  # the original is kept
        images = torch.randn(2, 3, 64, 96, generator=generator)
        with torch.no_grad():
            expected = mvpseg.dense_features(visual, images)
            torch.testing.assert_close(mvpseg.dense_features(folded, images), expected, rtol=1e-4, atol=1e-5)
            channels_last = folded.to(memory_format=torch.channels_last)
            features = mvpseg.dense_features(channels_last, images.contiguous(memory_format=torch.channels_last))
            torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-5)
    finally:
        visual.load_state_dict(saved)


def test_segmenter_leaves_the_clip_tower_alone(tiny_rn: mvpseg.ClipBundle) -> None:
    segmenter = _segmenter(tiny_rn)
    assert segmenter.tower is not tiny_rn.model.visual
    assert any(isinstance(module, nn.BatchNorm2d) for module in tiny_rn.model.visual.modules())
    assert tiny_rn.model.visual.conv1.weight.is_contiguous()  # not switched to channels-last
    plain = _segmenter(tiny_rn, fold_batchnorm=False, channels_last=False)
    assert plain.tower is tiny_rn.model.visual


@pytest.mark.parametrize("learned", [True, False])
def test_text_embeddings_in_class_batches_equal_one_batch(tiny_rn: mvpseg.ClipBundle, learned: bool) -> None:
    names = ["cat", "dog", "grass", "sky", "road", "a very long class name indeed", "tree"]
    if learned:
        segmenter = _segmenter(tiny_rn, text_batch=3)
    else:
        segmenter = Segmenter(mvpseg.build_mvpseg(tiny_rn, None), InferenceConfig(text_batch=3), device="cpu")
    with torch.no_grad():
        expected = segmenter.model.text_embeddings(names)
    torch.testing.assert_close(segmenter.text_embeddings(names), expected, rtol=1e-5, atol=1e-6)
