"""Slide to latents: tissue, grid, tile batches through the tile encoder, then the slide encoder.

This is the one path every front end uses (CLI, daemon, batch, training data). It reports progress
by stage, can be cancelled between batches through the progress callback, resumes an interrupted
slide from its saved partial features, and serves repeated requests from the feature cache.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from antoni_bridge import __version__
from antoni_bridge.encoders.prism import SlideEncoder, load_slide_encoder
from antoni_bridge.encoders.sources import prepare_cpu
from antoni_bridge.encoders.virchow import TileEncoder, load_tile_encoder
from antoni_bridge.errors import BridgeError
from antoni_bridge.features.cache import FeatureCache, PartialFeatures, cache_key
from antoni_bridge.features.h5 import FeatureFile
from antoni_bridge.slides.grid import GridSpec, TileGrid, plan_grid
from antoni_bridge.slides.reader import Slide
from antoni_bridge.slides.regions import Region
from antoni_bridge.slides.tile_stream import iter_tile_batches
from antoni_bridge.slides.tissue import ThresholdTissueDetector, TissueMask

SAVE_EVERY_TILES = 2048  # how much finished work an interruption may lose


@dataclass(frozen=True)
class Progress:
    stage: str  # reading, tissue, tiling, tile-embedding, slide-encoding
    done: int
    total: int
    rate: float = 0.0  # items per second in this stage


ProgressCallback = Callable[[Progress], None]


def _quiet(_: Progress) -> None:
    """The default progress callback: report nothing."""


@dataclass
class Encoders:
    tile: TileEncoder
    slide: SlideEncoder

    @classmethod
    def load(cls, tile_source: str, slide_source: str, device: str = "cpu", precision: str = "bf16") -> Encoders:
        if torch.device(device).type == "cpu":
            prepare_cpu()
        tile = load_tile_encoder(tile_source, device=device, precision=precision)
        slide = load_slide_encoder(slide_source, device=device, precision=precision)
        if slide.config.context_dim != tile.embedding_dim:
            raise BridgeError(
                f"The slide encoder expects {slide.config.context_dim}-wide tile embeddings but the tile encoder "
                f"gives {tile.embedding_dim}.",
                "Prism needs Virchow v1 (paige-ai/Virchow); the demo encoders go together (--demo)",
            )
        return cls(tile=tile, slide=slide)


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


@dataclass
class EmbedResult:
    data: FeatureFile
    cache_hit: bool
    resumed_tiles: int
    timings: dict[str, float]
    tissue: TissueMask
    grid: TileGrid


def plan(request: SlideRequest, progress: ProgressCallback = _quiet) -> PlannedSlide:
    """Open the slide, find tissue and lay the grid. The caller closes `.slide`."""
    start = time.perf_counter()
    progress(Progress("reading", 0, 1))
    slide = Slide(request.path, mpp=request.slide_mpp)
    try:
        progress(Progress("tissue", 0, 1))
        tissue = request.detector.detect(slide)
        progress(Progress("tiling", 0, 1))
        grid = plan_grid(slide, tissue, request.spec, request.region)
    except BaseException:
        slide.close()
        raise
    return PlannedSlide(slide, tissue, grid, time.perf_counter() - start)


def embed_slide(
    request: SlideRequest,
    encoders: Encoders,
    cache: FeatureCache,
    progress: ProgressCallback = _quiet,
    batch_size: int = 64,
    threads: int | None = None,
    save_every: int = SAVE_EVERY_TILES,
) -> EmbedResult:
    """Features and latents for the request, from the cache when it has them."""
    planned = plan(request, progress)
    with planned.slide as slide:
        key = cache_key(_key_parts(slide, planned.grid, request, encoders))
        cached = cache.get(key)
        if cached is not None and cached.latents is not None:
            return EmbedResult(cached, True, 0, {"plan_s": planned.seconds}, planned.tissue, planned.grid)
        start = time.perf_counter()
        partial = cache.partial(key)
        features, resumed = embed_tiles(
            slide, planned.grid, encoders.tile, partial, progress, batch_size, threads, save_every
        )
        tiles_s = time.perf_counter() - start
        progress(Progress("slide-encoding", 0, 1))
        start = time.perf_counter()
        latents = encoders.slide.encode(torch.from_numpy(features)).numpy()
        slide_s = time.perf_counter() - start
        progress(Progress("slide-encoding", 1, 1))
        data = feature_file(slide, planned.grid, request, features, latents, encoders)
        cache.put(key, data)
    timings = {"plan_s": planned.seconds, "tile_embedding_s": tiles_s, "slide_encoding_s": slide_s}
    return EmbedResult(data, False, resumed, timings, planned.tissue, planned.grid)


def embed_tiles(
    slide: Slide,
    grid: TileGrid,
    encoder: TileEncoder,
    partial: PartialFeatures,
    progress: ProgressCallback = _quiet,
    batch_size: int = 64,
    threads: int | None = None,
    save_every: int = SAVE_EVERY_TILES,
) -> tuple[np.ndarray, int]:
    """Embeddings of every grid tile, resuming from (and saving to) `partial`; also how many were resumed."""
    total, width = len(grid), encoder.embedding_dim
    done = partial.resume(total, width)
    resumed = len(done)
    features = np.empty((total, width), dtype=np.float32)
    features[:resumed] = done
    pending_from, start = resumed, time.perf_counter()
    progress(Progress("tile-embedding", resumed, total))
    for batch in iter_tile_batches(slide, grid, batch_size=batch_size, start=resumed, threads=threads):
        stop = int(batch.indices[-1]) + 1
        features[batch.indices] = encoder.embed(batch.pixels).numpy()
        if stop - pending_from >= save_every and stop < total:
            partial.save(pending_from, features[pending_from:stop])
            pending_from = stop
        rate = (stop - resumed) / max(time.perf_counter() - start, 1e-9)
        progress(Progress("tile-embedding", stop, total, rate))
    return features, resumed


def feature_file(
    slide: Slide,
    grid: TileGrid,
    request: SlideRequest,
    features: np.ndarray | None = None,
    latents: np.ndarray | None = None,
    encoders: Encoders | None = None,
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
        attrs |= {
            "tile_encoder": encoders.tile.name,
            "tile_encoder_source": encoders.tile.source,
            "slide_encoder": encoders.slide.name,
            "slide_encoder_source": encoders.slide.source,
        }
    coords_attrs = {
        "patch_size": grid.spec.size,
        "patch_size_level0": round(grid.level0_size),
        "level0_magnification": level0_magnification,
        "target_magnification": round(10.0 / grid.spec.mpp),
        "overlap": 0,
        "name": slide.path.stem,
    }
    return FeatureFile(grid.coords, grid.contour_index, attrs, coords_attrs, features, latents)


def _key_parts(slide: Slide, grid: TileGrid, request: SlideRequest, encoders: Encoders) -> dict[str, object]:
    return {
        "slide": slide.fingerprint,
        "slide_mpp": slide.mpp,
        "region": grid.region.key() if grid.region else None,
        "grid": asdict(grid.spec),
        "detector": asdict(request.detector),
        "tile_encoder": encoders.tile.identity,
        "slide_encoder": encoders.slide.identity,
        "format": 1,
    }
