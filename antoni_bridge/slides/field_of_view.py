"""A field of view: what a pathologist sees of a region on screen, for MedGemma's own vision (view mode).

The region's bounding box, widened to a square around its centre (MedGemma's image encoder takes square
images, and stretching tissue would change what it looks like), read from the coarsest level that still
has `size` pixels across, then resized to size x size.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from antoni_bridge.errors import BridgeError
from antoni_bridge.slides.levels import coarsest_level
from antoni_bridge.slides.reader import Slide
from antoni_bridge.slides.regions import Region

FIELD_SIZE = 896  # MedGemma's image size


def read_field_of_view(slide: Slide, region: Region | None, size: int = FIELD_SIZE) -> np.ndarray:
    """The (size, size, 3) RGB field of view of `region`, or of the whole slide."""
    width, height = slide.dimensions
    x0, y0, x1, y1 = region.bounds if region else (0, 0, width, height)
    side = max(x1 - x0, y1 - y0, 1.0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, top = int(max(0, min(cx - side / 2, width - side))), int(max(0, min(cy - side / 2, height - side)))
    side_px = int(min(side, width - left, height - top))
    if side_px < 16:
        raise BridgeError(f"The region is {side_px} px across: too small to look at.", "draw a larger region")
    level = coarsest_level(slide.level_downsamples, max(side_px / size, 1.0), tolerance=1.0)
    downsample = slide.level_downsamples[level]
    read = max(1, round(side_px / downsample))
    pixels = slide.read_region((left, top), level, (read, read))
    return np.asarray(Image.fromarray(pixels).resize((size, size), Image.Resampling.LANCZOS))
