"""Pictures of segmentations: palettes, palette PNGs, overlays with a legend, per-prompt maps."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["voc_palette", "palette", "colorize", "overlay", "prompt_map_grid"]


def voc_palette(num_colors: int = 256) -> np.ndarray:
    """PASCAL VOC's bit-interleaved colour map (index 0 black), as stored in VOC's palette PNGs.

    Returns:
        (num_colors, 3) uint8 RGB.
    """
    indices = np.arange(num_colors)
    colors = np.zeros((num_colors, 3), dtype=np.int64)
    for bit in range(8):
        for channel in range(3):
            colors[:, channel] |= ((indices >> (3 * bit + channel)) & 1) << (7 - bit)
    return colors.astype(np.uint8)


def palette(num_colors: int = 256) -> np.ndarray:
    """The display palette: VOC's colours shifted by one so class 0 is not black; 255 (ignore) is white.

    Returns:
        (num_colors, 3) uint8 RGB.
    """
    colors = voc_palette(num_colors + 1)[1:].copy()
    if num_colors > 255:
        colors[255] = 255
    return colors


def colorize(labels: np.ndarray) -> Image.Image:
    """A palette ("P" mode) PNG-ready image whose pixel values are the class indices.

    Args:
        labels: (H, W) integer class indices in [0, 255].
    """
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError("palette images hold class indices 0..255 only")
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(palette().ravel().tolist())
    return image


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has a fixed-size default font
        return ImageFont.load_default()


def overlay(image: np.ndarray, labels: np.ndarray, class_names: Sequence[str], alpha: float = 0.5,
            legend: bool = True) -> Image.Image:
    """Blend class colours over the image and add a legend of the classes present.

    Args:
        image: (H, W, 3) uint8 RGB.
        labels: (H, W) class indices into ``class_names``.
        class_names: the vocabulary.
        alpha: weight of the colours.
        legend: draw a legend strip on the right with each present class and its pixel share.

    Returns:
        An RGB PIL image (wider than the input when a legend is drawn).
    """
    colors = palette()
    blended = (image.astype(np.float32) * (1 - alpha) + colors[labels].astype(np.float32) * alpha)
    picture = Image.fromarray(blended.round().clip(0, 255).astype(np.uint8))
    if not legend:
        return picture
    counts = np.bincount(labels.ravel(), minlength=len(class_names))
    present = [index for index in np.argsort(-counts) if counts[index] > 0]
    size = max(12, min(24, picture.height // 24))
    font = _font(size)
    line = size + 6
    texts = [f"{class_names[index]}  {100.0 * counts[index] / labels.size:.1f}%" for index in present]
    text_width = max((int(ImageDraw.Draw(picture).textlength(text, font=font)) for text in texts), default=0)
    strip_width = line + 8 + text_width + 12
    canvas = Image.new("RGB", (picture.width + strip_width, max(picture.height, line * len(present) + 8)), "white")
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for row, (index, text) in enumerate(zip(present, texts)):
        top = 4 + row * line
        left = picture.width + 6
        draw.rectangle([left, top, left + size, top + size], fill=tuple(int(c) for c in colors[index]), outline="black")
        draw.text((left + size + 8, top), text, fill="black", font=font)
    return canvas


def prompt_map_grid(image: np.ndarray, maps: np.ndarray, titles: Sequence[str], cell: int = 160,
                    outline: np.ndarray | None = None,
                    value_range: tuple[float, float] | None = None) -> Image.Image:
    """A row of heat maps, one per prompt, next to the image ("different prompts look at different parts").

    Args:
        image: (H, W, 3) uint8 RGB.
        maps: (P, h, w) float maps (any range; each is min-max scaled on its own), drawn cell by cell.
        titles: P captions.
        cell: side of each tile in pixels.
        outline: optional (H, W) region ids (e.g. part masks) whose boundaries are drawn in white on
            every tile.
        value_range: (low, high) drawn as blue and red on every tile; default each map's own min and max.

    Returns:
        An RGB PIL image with P + 1 tiles.
    """
    font = _font(12)
    tiles = [Image.fromarray(image).resize((cell, cell), Image.Resampling.BILINEAR)]
    for single in maps:
        low, high = value_range if value_range is not None else (float(single.min()), float(single.max()))
        scaled = np.clip((single - low) / max(high - low, 1e-8), 0.0, 1.0)
        heat = np.stack([scaled, 1 - np.abs(2 * scaled - 1), 1 - scaled], axis=-1)  # blue -> green -> red
        tiles.append(Image.fromarray((heat * 255).astype(np.uint8)).resize((cell, cell), Image.Resampling.NEAREST))
    if outline is not None:
        regions = np.asarray(Image.fromarray(outline.astype(np.uint8)).resize((cell, cell), Image.Resampling.NEAREST))
        edge = np.zeros_like(regions, dtype=bool)
        edge[1:] |= regions[1:] != regions[:-1]
        edge[:, 1:] |= regions[:, 1:] != regions[:, :-1]
        for index, tile in enumerate(tiles):
            pixels = np.array(tile)
            pixels[edge] = 255
            tiles[index] = Image.fromarray(pixels)
    canvas = Image.new("RGB", (cell * len(tiles), cell + 18), "white")
    draw = ImageDraw.Draw(canvas)
    for column, (tile, title) in enumerate(zip(tiles, ["image", *titles])):
        canvas.paste(tile, (column * cell, 18))
        draw.text((column * cell + 4, 2), title, fill="black", font=font)
    return canvas
