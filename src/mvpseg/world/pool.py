"""The pretraining pool of world scenes: drawn once, half of it twin pairs, and captions from class areas.

A *twin pair* shares its layout and colours and differs in one thing's class (or, with a stuff-twin
fraction, in the background kinds): a hard negative in the same batch that only the changed word
separates. :mod:`mvpseg.world.pretrain` trains on it.
"""

from __future__ import annotations

import multiprocessing

import numpy as np
from tqdm import tqdm

from mvpseg.world.drawing import scene_rng
from mvpseg.world.registry import get_world

__all__ = ["PRETRAIN_SPLIT", "draw_pool", "is_stuff_twin", "caption_from_counts", "batch_indices"]

PRETRAIN_SPLIT = 2  # scene_rng stream of pretraining images (train/val of the demo use 0 and 1)


def is_stuff_twin(seed: int, pair: int, fraction: float) -> bool:
    """Whether twin pair ``pair`` of the pool changes the stuff (else a thing)."""
    return fraction > 0 and np.random.default_rng(np.random.SeedSequence([seed, 3, pair])).random() < fraction


def _draw_pool_chunk(job: tuple[int, int, int, int, int, float, str]) -> tuple[np.ndarray, np.ndarray]:
    """Scenes [start, stop) of the pool: (N, H, W, 3) uint8 images, (N, C) int32 class pixel counts.

    The first ``num_pairs`` pairs of the pool are twins (images 2k and 2k + 1 share a spec).
    """
    seed, start, stop, size, num_pairs, stuff_twin_fraction, world_name = job
    world = get_world(world_name)
    images = np.empty((stop - start, size, size, 3), dtype=np.uint8)
    counts = np.empty((stop - start, len(world.CLASS_NAMES)), dtype=np.int32)
    for offset, index in enumerate(range(start, stop)):
        if index < 2 * num_pairs:
            rng = scene_rng(seed, PRETRAIN_SPLIT, index // 2)
            spec = world.sample_spec(rng, size=size)
            if index % 2 == 1:
                swap = "stuff" if is_stuff_twin(seed, index // 2, stuff_twin_fraction) else "thing"
                spec = world.twin_spec(spec, rng, swap)
            image, label = world.render(spec)
        else:
            scene = world.generate_scene(scene_rng(seed, PRETRAIN_SPLIT, index), size=size)
            image, label = scene.image, scene.label
        images[offset] = image
        counts[offset] = np.bincount(label.ravel(), minlength=len(world.CLASS_NAMES))
    return images, counts


def draw_pool(
    seed: int, size: int, num_images: int, twin_fraction: float, workers: int, progress: bool = True,
    stuff_twin_fraction: float = 0.0, world: str = "patterns",
) -> tuple[np.ndarray, np.ndarray, int]:
    """Draw the pretraining pool.

    Returns:
        images: (N, H, W, 3) uint8; counts: (N, C) int32 pixels per class; and the number of twin
        pairs (images [0, 2 * pairs) are pairs (2k, 2k + 1)).
    """
    num_pairs = int(num_images * twin_fraction) // 2
    chunk = 256
    jobs = [(seed, s, min(s + chunk, num_images), size, num_pairs, stuff_twin_fraction, world)
            for s in range(0, num_images, chunk)]
    bar = tqdm(total=num_images, desc="drawing scenes", unit="img", disable=not progress)
    parts = []
    if workers > 1:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for part in pool.imap(_draw_pool_chunk, jobs):
                parts.append(part)
                bar.update(len(part[0]))
    else:
        for job in jobs:
            parts.append(_draw_pool_chunk(job))
            bar.update(len(parts[-1][0]))
    bar.close()
    images = np.concatenate([p[0] for p in parts])
    counts = np.concatenate([p[1] for p in parts])
    return images, counts, num_pairs


def caption_from_counts(counts: np.ndarray, rng: np.random.Generator, stuff_probability: float = 0.5,
                         stuff_only: bool = False, world: str = "patterns") -> str:
    """A caption for an image known only by its class pixel counts (C,)."""
    # caption() only needs the class areas: a 1-D "label map" with the same histogram is equivalent
    label = np.repeat(np.arange(len(counts), dtype=np.uint8), counts)
    return get_world(world).caption(label, rng, stuff_probability=stuff_probability, stuff_only=stuff_only)


def batch_indices(rng: np.random.Generator, batch_size: int, num_images: int, num_pairs: int,
                   twin_fraction: float) -> np.ndarray:
    """Pool indices of one batch: twin pairs side by side, then single scenes."""
    pairs = min(int(batch_size * twin_fraction) // 2, num_pairs)
    chosen = rng.choice(num_pairs, size=pairs, replace=False) if pairs else np.empty(0, dtype=np.int64)
    twins = np.stack([2 * chosen, 2 * chosen + 1], axis=1).ravel()
    singles_from = 2 * num_pairs
    rest = batch_size - len(twins)
    if num_images > singles_from:
        singles = rng.integers(singles_from, num_images, size=rest)
    else:
        singles = rng.integers(0, num_images, size=rest)
    return np.concatenate([twins, singles]).astype(np.int64)
