"""Planning a slide: what to read (tissue, grid) and how its feature file is described.

No models here, so `antoni-bridge tiles` and every front end's checks start fast; the encoders take
over in `antoni_bridge.encoders.pipeline`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from antoni_bridge import __version__
from antoni_bridge.features.h5 import FeatureFile
from antoni_bridge.slides.grid import GridSpec, TileGrid, plan_grid
from antoni_bridge.slides.reader import Slide
from antoni_bridge.slides.regions import Region
from antoni_bridge.slides.tissue import ThresholdTissueDetector, TissueMask


@dataclass(frozen=True)
class Progress:
    stage: str  # reading, tissue, tiling, tile-embedding, slide-encoding
    done: int
    total: int
    rate: float = 0.0  # items per second in this stage


ProgressCallback = Callable[[Progress], None]


def quiet(_: Progress) -> None:
    """The default progress callback: report nothing."""


@dataclass
class SlideRequest:
    """Which tiles of which slide: everything that decides the grid."""

    path: Path
    region: Region | None = None
    spec: GridSpec = field(default_factory=GridSpec)
    slide_mpp: float | None = None
    detector: ThresholdTissueDetector = field(default_factory=ThresholdTissueDetector)


@dataclass
class PlannedSlide:
    slide: Slide
    tissue: TissueMask
    grid: TileGrid
    seconds: float


def plan(request: SlideRequest, progress: ProgressCallback = quiet) -> PlannedSlide:
    """Open the slide, find tissue and lay the grid. The caller closes `.slide`."""
    start = time.perf_counter()
    progress(Progress("reading", 0, 1))
    slide = Slide(request.path, mpp=request.slide_mpp)
    try:
        progress(Progress("tissue", 0, 1))
        tissue = request.detector.detect(slide, lambda done, total: progress(Progress("tissue", done, total)))
        progress(Progress("tiling", 0, 1))
        grid = plan_grid(slide, tissue, request.spec, request.region)
    except BaseException:
        slide.close()
        raise
    return PlannedSlide(slide, tissue, grid, time.perf_counter() - start)


def feature_file(
    slide: Slide,
    grid: TileGrid,
    request: SlideRequest,
    features: np.ndarray | None = None,
    latents: np.ndarray | None = None,
    encoders: Any = None,  # pipeline.Encoders, when the file has features
) -> FeatureFile:
    """The feature file for a grid, with TRIDENT's coords attributes and our provenance attributes."""
    level0_magnification = slide.objective_power or round(10.0 / slide.mpp)
    attrs: dict[str, object] = {
        "slide_name": slide.path.name,
        "slide_fingerprint": slide.fingerprint,
        "slide_mpp": slide.mpp,
        "slide_dimensions": list(slide.dimensions),
        "mpp": grid.spec.mpp,
        "tile_size": grid.spec.size,
        "min_tissue": grid.spec.min_tissue,
        "level": grid.level,
        "level_downsample": grid.level_downsample,
        "read_size": grid.read_size,
        "region": grid.region.to_geojson() if grid.region else None,
        "region_name": grid.region.name if grid.region and grid.region.name else "",
        "tissue_detector": asdict(request.detector),
        "antoni_bridge_version": __version__,
    }
    if encoders is not None:
        attrs |= encoder_attrs(encoders)
    coords_attrs = {
        "patch_size": grid.spec.size,
        "patch_size_level0": round(grid.level0_size),
        "level0_magnification": level0_magnification,
        "target_magnification": round(10.0 / grid.spec.mpp),
        "overlap": 0,
        "name": slide.path.stem,
    }
    return FeatureFile(grid.coords, grid.contour_index, attrs, coords_attrs, features, latents)


def encoder_attrs(encoders: Any) -> dict[str, str]:  # encoders: pipeline.Encoders
    """The feature file's record of which encoders computed it (also added by cohort runs, whose grid is
    planned where no encoder is loaded)."""
    return {
        "tile_encoder": encoders.tile.name,
        "tile_encoder_source": encoders.tile.source,
        "slide_encoder": encoders.slide.name,
        "slide_encoder_source": encoders.slide.source,
    }
