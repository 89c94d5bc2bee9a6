"""What runs on Ray's workers for `cohort embed`: planning, reading tile blocks, the encoders, writing.

Plain functions and one class; `cohort.embedding` turns them into Ray tasks and actors, so this module
(like the rest of antoni-bridge) imports without Ray.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from antoni_bridge.cohort.sources import CohortSlide
from antoni_bridge.errors import BridgeError
from antoni_bridge.features.h5 import FeatureFile, write_feature_file
from antoni_bridge.slides.grid import GridSpec, TileGrid


@dataclass(frozen=True)
class EmbedSettings:
    """What to compute (grid, encoders) and how to run it (device, batches, blocks)."""

    tile_encoder: str
    slide_encoder: str
    spec: GridSpec = field(default_factory=GridSpec)
    slide_mpp: float | None = None
    device: str = "cpu"  # "cuda": each encoder worker gets its own share of a GPU from Ray
    precision: str = "bf16"  # the encoders' autocast on a GPU (fp32 on the CPU whatever is asked)
    batch_size: int = 64  # tiles per encoder call, as `embed --batch-size`
    block_tiles: int = 512  # tiles per read task: what the object store holds per block in flight
    worker_cpus: float = 1.0  # CPUs (torch threads) per encoder worker
    gpus_per_worker: float = 1.0  # with device cuda: 0.5 puts two workers on each GPU
    retries: int = 2  # a block whose worker died is tried this many more times, then its slide fails


@dataclass
class Planned:
    """A planned slide: its grid and the feature file's description, or that its file is already there."""

    fingerprint: str
    tiles: int
    seconds: float
    grid: TileGrid | None = None
    skeleton: FeatureFile | None = None  # coords, contour_index and attributes; no features yet

    @property
    def skipped(self) -> bool:
        return self.grid is None


def plan_slide(slide: CohortSlide, settings: EmbedSettings, out_file: Path) -> Planned:
    """Fingerprint the slide; when OUT_FILE already holds its features, stop there. Else find tissue and
    lay the grid, as `embed` does."""
    from antoni_bridge.cli import quiet_libraries
    from antoni_bridge.slides.planning import SlideRequest, feature_file, plan
    from antoni_bridge.slides.reader import Slide
    from antoni_bridge.slides.regions import Region

    quiet_libraries()  # a damaged file's reason goes into the manifest, not the readers' logs
    start = time.perf_counter()
    with Slide(slide.path, mpp=settings.slide_mpp) as opened:
        fingerprint = opened.fingerprint
    tiles = finished_tiles(out_file, fingerprint, settings)
    if tiles is not None:
        return Planned(fingerprint, tiles, 0.0)
    region = Region.from_geojson_dict(slide.region) if slide.region else None
    request = SlideRequest(slide.path, region, settings.spec, settings.slide_mpp)
    planned = plan(request)
    with planned.slide as opened:
        skeleton = feature_file(opened, planned.grid, request)
    return Planned(fingerprint, len(planned.grid), time.perf_counter() - start, planned.grid, skeleton)


def finished_tiles(out_file: Path, fingerprint: str, settings: EmbedSettings) -> int | None:
    """The tile count of OUT_FILE when it is a whole feature file of this slide content, grid and encoders
    (files are written whole or not at all, so a killed run leaves none to mistake); else None."""
    expected = {
        "slide_fingerprint": fingerprint,
        "mpp": settings.spec.mpp,
        "tile_size": settings.spec.size,
        "min_tissue": settings.spec.min_tissue,
        "tile_encoder_source": settings.tile_encoder,
        "slide_encoder_source": settings.slide_encoder,
    }
    try:
        with h5py.File(out_file, "r") as h5:
            same = all(_plain(h5.attrs.get(k)) == v for k, v in expected.items())
            whole = "features" in h5 and "latents" in h5 and "coords" in h5
            return int(h5["coords"].shape[0]) if same and whole else None
    except (OSError, KeyError):  # absent or damaged: embed it again
        return None


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value.item() if isinstance(value, np.generic) else value


def read_block(path: Path, slide_mpp: float | None, grid: TileGrid) -> np.ndarray:
    """The pixels of a block of grid tiles (a grid holding only the block's tiles), read as `embed` reads."""
    from antoni_bridge.slides.reader import Slide
    from antoni_bridge.slides.tile_stream import iter_tile_batches

    with Slide(path, mpp=slide_mpp) as slide:
        batches = [b.pixels for b in iter_tile_batches(slide, grid, batch_size=max(1, len(grid)), threads=1)]
    return np.concatenate(batches)


def block_grid(grid: TileGrid, first: int, stop: int) -> TileGrid:
    return replace(
        grid,
        coords=grid.coords[first:stop],
        contour_index=grid.contour_index[first:stop],
        tissue_fraction=grid.tissue_fraction[first:stop],
    )


class TileWorker:
    """The encoders, loaded once per worker: tile blocks in, features out; and the slide encoder per slide."""

    def __init__(self, settings: EmbedSettings) -> None:
        import torch

        from antoni_bridge.cli import quiet_libraries
        from antoni_bridge.encoders.pipeline import Encoders

        quiet_libraries()  # as the command does: known third-party notices stay out of the run's output
        if settings.device == "cpu":
            torch.set_num_threads(max(1, int(settings.worker_cpus)))
        self.batch_size, s = settings.batch_size, settings
        self.problem: BridgeError | None = None
        try:
            self.encoders = Encoders.load(s.tile_encoder, s.slide_encoder, s.device, s.precision)
        except BridgeError as exc:  # kept for `describe`: an actor whose start fails is only "dead" to Ray
            self.problem = exc

    def describe(self) -> dict[str, Any]:
        """The feature file's encoder attributes and the tile size the tile encoder takes; or why the
        encoders did not load."""
        from antoni_bridge.slides.planning import encoder_attrs

        if self.problem is not None:
            raise self.problem
        return {"attrs": encoder_attrs(self.encoders), "input_size": self.encoders.tile.input_size}

    def embed(self, pixels: np.ndarray) -> tuple[np.ndarray, int]:
        """Features of a block, in the batches `embed` uses (blocks start at multiples of the batch size);
        also the tile count, a small value the driver waits on instead of fetching the features."""
        size = self.batch_size
        parts = [self.encoders.tile.embed(pixels[i : i + size]).numpy() for i in range(0, len(pixels), size)]
        return np.concatenate(parts), len(pixels)

    def encode_slide(self, *features: np.ndarray) -> np.ndarray:
        import torch

        return self.encoders.slide.encode(torch.from_numpy(np.concatenate(features))).numpy()


def write_slide(
    out_file: Path, skeleton: FeatureFile, attrs: dict[str, Any], latents: np.ndarray, *features: np.ndarray
) -> int:
    """The slide's feature file, as `embed` writes it (atomically); returns its tile count."""
    values = np.concatenate(features) if features else np.empty((0, 0), dtype=np.float32)
    if len(values) != len(skeleton.coords):
        raise BridgeError(
            f"{len(values)} tile features were computed for {len(skeleton.coords)} tiles.", "run the cohort again"
        )
    data = replace(skeleton, attrs={**skeleton.attrs, **attrs}, features=values, latents=latents)
    write_feature_file(out_file, data)
    return len(values)
