"""The tile grid: which square tiles of `size` pixels at `mpp` um/px an encoder sees, and where to read them.

Tiles do not overlap. Over a whole slide the lattice starts at the slide's corner; over a region it is
centred on the region's bounds, and a tile belongs to the region when its centre lies inside it (holes
excluded), which makes the restriction exact and easy to state. Tiles are kept when the tissue
inside them passes `min_tissue`, and are listed row by row so readers can decode each stored
TIFF tile once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely

from antoni_bridge.errors import BridgeError
from antoni_bridge.slides.levels import coarsest_level
from antoni_bridge.slides.reader import Slide
from antoni_bridge.slides.regions import Region, clip_to_slide
from antoni_bridge.slides.tissue import TissueMask


@dataclass(frozen=True)
class GridSpec:
    """What the tile encoder expects: `size`-pixel tiles at `mpp` microns per pixel."""

    mpp: float = 0.5
    size: int = 224
    min_tissue: float = 0.0  # keep tiles with more tissue than this fraction (0: any tissue, as upstream)
    max_tiles: int = 250_000


@dataclass(frozen=True)
class TileGrid:
    """Kept tiles (top-left corners in level-0 pixels) and how to read them from the pyramid."""

    coords: np.ndarray  # (N, 2) int64 level-0 x, y
    contour_index: np.ndarray  # (N,) int32
    tissue_fraction: np.ndarray  # (N,) float32
    spec: GridSpec
    slide_mpp: float
    level: int  # pyramid level the pixels are read from
    level_downsample: float
    read_size: int  # pixels read at `level` per tile, resized to spec.size afterwards
    region: Region | None

    @property
    def level0_size(self) -> float:
        """Tile edge in level-0 pixels (448 for 224 px at 0.5 um/px on a 0.25 um/px slide)."""
        return self.spec.size * self.spec.mpp / self.slide_mpp

    def __len__(self) -> int:
        return len(self.coords)


def plan_grid(slide: Slide, tissue: TissueMask, spec: GridSpec, region: Region | None = None) -> TileGrid:
    """Lay the grid over the tissue (of the region, when given) and keep the tiles worth embedding.

    A region reaching beyond the slide is clipped to it (the grid's `region` is the clipped one); one
    entirely outside is refused."""
    step = spec.size * spec.mpp / slide.mpp
    if region is not None:
        region = clip_to_slide(region, *slide.dimensions)
    xs, ys = _lattice(slide, region, step)
    if len(xs) == 0 or len(ys) == 0:
        raise BridgeError(
            f"A tile of {spec.size} px at {spec.mpp} um/px ({step:.0f} level-0 px) does not fit on "
            f"{slide.path.name} ({slide.dimensions[0]}x{slide.dimensions[1]} px).",
            "check --mpp, --size and the slide's own mpp",
        )
    if len(xs) * len(ys) > 50 * spec.max_tiles:
        raise _too_many(len(xs) * len(ys), spec)
    grid_y, grid_x = np.meshgrid(ys, xs, indexing="ij")
    coords = np.stack([grid_x.ravel(), grid_y.ravel()], axis=1)
    if region is not None:
        centres = coords + step / 2
        coords = coords[shapely.contains_xy(region.geometry, centres[:, 0], centres[:, 1])]
    boxes = np.concatenate([coords, coords + step], axis=1).astype(np.float64)
    fraction = tissue.tissue_fraction(boxes)
    keep = fraction > spec.min_tissue
    coords, boxes, fraction = coords[keep], boxes[keep], fraction[keep]
    where = f"in the region{f' {region.name!r}' if region and region.name else ''}" if region else "on the slide"
    if len(coords) == 0:
        raise BridgeError(
            f"No tissue {where} of {slide.path.name}.",
            "check the overview image (--overview) or lower --min-tissue; for a region, draw it over tissue",
        )
    if len(coords) > spec.max_tiles:
        raise _too_many(len(coords), spec)
    level = coarsest_level(slide.level_downsamples, spec.mpp / slide.mpp)
    downsample = slide.level_downsamples[level]
    return TileGrid(
        coords=coords,
        contour_index=tissue.contour_of(boxes),
        tissue_fraction=fraction.astype(np.float32),
        spec=spec,
        slide_mpp=slide.mpp,
        level=level,
        level_downsample=downsample,
        read_size=max(1, round(step / downsample)),
        region=region,
    )


def _lattice(slide: Slide, region: Region | None, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Tile corners along x and y: from the slide's corner, or centred on the region's bounds.

    Only tiles wholly inside the slide are laid, so no tile needs padding.
    """
    width, height = slide.dimensions
    if region is None:
        return _axis(0.0, int(width // step), step, width), _axis(0.0, int(height // step), step, height)
    rx0, ry0, rx1, ry1 = region.bounds
    cols, rows = max(1, int(np.ceil((rx1 - rx0) / step))), max(1, int(np.ceil((ry1 - ry0) / step)))
    x0 = _inside((rx0 + rx1 - cols * step) / 2, cols * step, width)
    y0 = _inside((ry0 + ry1 - rows * step) / 2, rows * step, height)
    return _axis(x0, cols, step, width), _axis(y0, rows, step, height)


def _inside(start: float, extent: float, limit: int) -> float:
    """Shift a centred lattice back onto the slide when the region touches its edge."""
    return min(max(start, 0.0), max(limit - extent, 0.0))


def _axis(start: float, count: int, step: float, limit: int) -> np.ndarray:
    corners = np.round(start + np.arange(count) * step).astype(np.int64)
    return corners[(corners >= 0) & (corners + step <= limit + 0.5)]


def _too_many(count: int, spec: GridSpec) -> BridgeError:
    return BridgeError(
        f"The area would give {count:,} tiles, more than the limit of {spec.max_tiles:,}.",
        "choose a smaller region, or raise the limit if this is really meant",
    )
