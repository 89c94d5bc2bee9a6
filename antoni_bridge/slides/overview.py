"""The overview PNG: a thumbnail with the tissue outlines, their numbers, rejected pen ink, the region
and the kept tiles drawn on it, so a user can see at a glance what will be embedded."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from antoni_bridge.files import replacing
from antoni_bridge.slides.grid import TileGrid
from antoni_bridge.slides.levels import coarsest_level
from antoni_bridge.slides.reader import Slide
from antoni_bridge.slides.tissue import TissueMask

MAX_SIDE = 2000


def write_overview(slide: Slide, tissue: TissueMask, grid: TileGrid | None, out: str | os.PathLike[str]) -> Path:
    image, scale = thumbnail(slide)
    draw_tissue(image, tissue, scale)
    draw = ImageDraw.Draw(image)
    if grid is not None:
        edge = grid.level0_size * scale
        for x, y in grid.coords * scale:
            draw.rectangle([x, y, x + edge, y + edge], outline=(30, 90, 220))
        if grid.region is not None:
            _draw_region(draw, grid, scale)
    _label_contours(draw, tissue, scale)
    out = Path(out)
    with replacing(out) as tmp:
        image.save(tmp, format="PNG")
    return out


def thumbnail(slide: Slide, max_side: int = MAX_SIDE) -> tuple[Image.Image, float]:
    """The smallest level whose longest side is at least `max_side` (or the coarsest), fitted to `max_side`;
    and its scale (thumbnail pixels per level-0 pixel)."""
    level = coarsest_level(slide.level_downsamples, max(slide.dimensions) / max_side, tolerance=1.0)
    image = Image.fromarray(slide.read_level(level))
    image.thumbnail((max_side, max_side))
    return image, image.width / slide.dimensions[0]


def draw_tissue(image: Image.Image, tissue: TissueMask, scale: float) -> None:
    """Tissue outlines in green and rejected pen ink tinted red, drawn into `image` in place."""
    size = image.size
    labels = np.asarray(Image.fromarray(tissue.labels.astype(np.int32)).resize(size, Image.Resampling.NEAREST))
    pixels = np.asarray(image).copy()
    outline = (labels > 0) & ~ndimage.binary_erosion(labels > 0, iterations=2)
    pixels[outline] = (0, 170, 60)
    if tissue.pen is not None and tissue.pen.any():
        pen = np.asarray(Image.fromarray(tissue.pen).resize(size, Image.Resampling.NEAREST))
        pixels[pen] = (pixels[pen] * 0.4 + np.array([230, 0, 0]) * 0.6).astype(np.uint8)
    image.paste(Image.fromarray(pixels))


def _draw_region(draw: ImageDraw.ImageDraw, grid: TileGrid, scale: float) -> None:
    geometry = grid.region.geometry  # type: ignore[union-attr]
    for polygon in getattr(geometry, "geoms", [geometry]):
        for ring in [polygon.exterior, *polygon.interiors]:
            points = [(x * scale, y * scale) for x, y in ring.coords]
            draw.line(points, fill=(240, 180, 0), width=3)


def _label_contours(draw: ImageDraw.ImageDraw, tissue: TissueMask, scale: float) -> None:
    factor = tissue.downsample * scale
    for index, (cy, cx) in enumerate(
        ndimage.center_of_mass(tissue.labels > 0, tissue.labels, range(1, tissue.contour_count + 1))
    ):
        x, y = cx * factor, cy * factor
        draw.rectangle([x - 2, y - 2, x + 22, y + 14], fill=(255, 255, 255))
        draw.text((x + 2, y), str(index), fill=(0, 120, 40))
