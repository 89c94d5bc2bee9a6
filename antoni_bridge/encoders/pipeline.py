"""Slide to latents: tissue, grid, tile batches through the tile encoder, then the slide encoder.

This is the one path every front end uses (CLI, daemon, batch, training data). It reports progress
by stage, can be cancelled between batches through the progress callback, resumes an interrupted
slide from its saved partial features, and serves repeated requests from the feature cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from antoni_bridge.encoders.prism import SlideEncoder, load_slide_encoder
from antoni_bridge.encoders.sources import prepare_cpu
from antoni_bridge.encoders.virchow import TileEncoder, load_tile_encoder
from antoni_bridge.errors import BridgeError
from antoni_bridge.features.cache import FeatureCache, PartialFeatures, cache_key
from antoni_bridge.features.h5 import FeatureFile
from antoni_bridge.slides.grid import TileGrid
from antoni_bridge.slides.planning import (
    PlannedSlide,
    Progress,
    ProgressCallback,
    SlideRequest,
    feature_file,
    plan,
    quiet,
)
from antoni_bridge.slides.reader import Slide
from antoni_bridge.slides.tile_stream import iter_tile_batches
from antoni_bridge.slides.tissue import TissueMask

SAVE_EVERY_TILES = 2048  # how much finished work an interruption may lose
PIPELINE_VERSION = 2  # bump when tiling, reading or encoding changes its numbers


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


@dataclass(frozen=True)
class EmbedSettings:
    """How to run the tile encoder over a slide (not what it computes: that is the request's)."""

    batch_size: int = 64
    threads: int | None = None  # tile decoding threads; default: one per core, up to 8
    save_every: int = SAVE_EVERY_TILES  # finished tiles an interruption may lose


@dataclass
class EmbedResult:
    data: FeatureFile
    cache_hit: bool
    resumed_tiles: int
    timings: dict[str, float]
    tissue: TissueMask
    grid: TileGrid
    key: str = ""  # the feature cache's key of this result


def embed_slide(
    request: SlideRequest,
    encoders: Encoders,
    cache: FeatureCache,
    progress: ProgressCallback = quiet,
    settings: EmbedSettings = EmbedSettings(),
) -> EmbedResult:
    """Features and latents for the request, from the cache when it has them."""
    return embed_planned(plan(request, progress), request, encoders, cache, progress, settings)


def embed_planned(
    planned: PlannedSlide,
    request: SlideRequest,
    encoders: Encoders,
    cache: FeatureCache,
    progress: ProgressCallback = quiet,
    settings: EmbedSettings = EmbedSettings(),
    features: bool = True,
) -> EmbedResult:
    """Embed an already planned slide (plan first, so a bad slide fails before any model loads). Closes it.
    Without `features`, a cache hit leaves the tile features on disk (the result's `features` is None)."""
    with planned.slide as slide:
        grid = planned.grid
        if grid.spec.size != encoders.tile.input_size:
            raise BridgeError(
                f"The tile encoder takes {encoders.tile.input_size}-px tiles, not {grid.spec.size}.",
                f"use --size {encoders.tile.input_size}; change the scale with --mpp",
            )
        key = cache_key(_key_parts(slide, grid, request, encoders))
        cached = cache.get(key, features=features)
        if cached is not None and cached.latents is not None:
            data = feature_file(slide, grid, request, cached.features, cached.latents, encoders)
            return EmbedResult(data, True, 0, {"plan_s": planned.seconds}, planned.tissue, grid, key)
        start = time.perf_counter()
        features, resumed = embed_tiles(slide, grid, encoders.tile, cache.partial(key), progress, settings)
        tiles_s = time.perf_counter() - start
        progress(Progress("slide-encoding", 0, 1))
        start = time.perf_counter()
        latents = encoders.slide.encode(torch.from_numpy(features)).numpy()
        slide_s = time.perf_counter() - start
        progress(Progress("slide-encoding", 1, 1))
        data = feature_file(slide, grid, request, features, latents, encoders)
        cache.put(key, data)
    timings = {"plan_s": planned.seconds, "tile_embedding_s": tiles_s, "slide_encoding_s": slide_s}
    return EmbedResult(data, False, resumed, timings, planned.tissue, grid, key)


@dataclass(frozen=True)
class SlideLatents:
    """A slide's (or region's) latents without its tile features: what answering needs."""

    latents: np.ndarray  # (513, D)
    fingerprint: str  # the slide's content fingerprint
    tiles: int
    clipped: bool  # the region reached beyond the slide and was clipped to it
    cache_hit: bool


def embed_latents(
    request: SlideRequest,
    encoders: Encoders,
    cache: FeatureCache,
    progress: ProgressCallback = quiet,
    settings: EmbedSettings = EmbedSettings(),
) -> SlideLatents:
    """The latents of the request. When the slide file (by identity) and every setting are as when its
    latents were cached, they are read alone: the slide is not opened nor its tissue found again."""
    lookup = cache_key(_lookup_parts(request, encoders))
    facts = cache.recall(lookup)
    latents = cache.latents(facts["key"]) if facts else None
    if facts is not None and latents is not None:
        return SlideLatents(latents, facts["fingerprint"], facts["tiles"], facts["clipped"], True)
    result = embed_planned(plan(request, progress), request, encoders, cache, progress, settings, features=False)
    fingerprint = str(result.data.attrs["slide_fingerprint"])
    clipped = result.grid.region is not request.region  # clip_to_slide returns a region inside as it is
    facts = {"key": result.key, "fingerprint": fingerprint, "tiles": len(result.grid), "clipped": clipped}
    cache.remember(lookup, facts)
    return SlideLatents(result.data.latents, fingerprint, len(result.grid), clipped, result.cache_hit)


def _lookup_parts(request: SlideRequest, encoders: Encoders) -> dict[str, object]:
    """What decides the cache key and is known before the slide is opened: the file's identity stands
    for its content (a replaced or rewritten file has another), the settings for the grid."""
    from antoni_bridge.slides.reader import file_identity

    return {
        "pipeline": PIPELINE_VERSION,
        "path": str(request.path),
        "file": list(file_identity(request.path)),
        "slide_mpp": request.slide_mpp,
        "region": request.region.key() if request.region else None,
        "grid": asdict(request.spec),
        "detector": asdict(request.detector),
        **_encoder_parts(encoders),
    }


def embed_tiles(
    slide: Slide,
    grid: TileGrid,
    encoder: TileEncoder,
    partial: PartialFeatures,
    progress: ProgressCallback = quiet,
    settings: EmbedSettings = EmbedSettings(),
) -> tuple[np.ndarray, int]:
    """Embeddings of every grid tile, resuming from (and saving to) `partial`; also how many were resumed."""
    total, width = len(grid), encoder.embedding_dim
    done = partial.resume(total, width)
    resumed = len(done)
    features = np.empty((total, width), dtype=np.float32)
    features[:resumed] = done
    pending_from, start = resumed, time.perf_counter()
    progress(Progress("tile-embedding", resumed, total))
    batches = iter_tile_batches(slide, grid, settings.batch_size, start=resumed, threads=settings.threads)
    with contextlib.closing(batches):  # stops the reader thread at once if embedding fails
        for batch in batches:
            stop = int(batch.indices[-1]) + 1
            features[batch.indices] = encoder.embed(batch.pixels).numpy()
            if stop - pending_from >= settings.save_every and stop < total:
                partial.save(pending_from, features[pending_from:stop])
                pending_from = stop
            rate = (stop - resumed) / max(time.perf_counter() - start, 1e-9)
            progress(Progress("tile-embedding", stop, total, rate))
    return features, resumed


def _key_parts(slide: Slide, grid: TileGrid, request: SlideRequest, encoders: Encoders) -> dict[str, object]:
    """Everything the numbers depend on, the grid as computed included (a new detector version changes
    it even with the same settings) and the arithmetic (device type and precision)."""
    planned = hashlib.sha256(grid.coords.tobytes() + grid.contour_index.tobytes()).hexdigest()
    return {
        "pipeline": PIPELINE_VERSION,
        "slide": slide.fingerprint,
        "slide_mpp": slide.mpp,
        "region": grid.region.key() if grid.region else None,
        "grid": asdict(grid.spec),
        "planned": [planned, grid.level, grid.read_size],
        "detector": asdict(request.detector),
        **_encoder_parts(encoders),
    }


def _encoder_parts(encoders: Encoders) -> dict[str, object]:
    return {
        "tile_encoder": [encoders.tile.identity, encoders.tile.device.type, str(encoders.tile.autocast_dtype)],
        "slide_encoder": [encoders.slide.identity, str(encoders.slide.autocast_dtype)],
    }
