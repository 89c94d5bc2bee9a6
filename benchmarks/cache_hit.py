"""A feature-cache hit, before and after issue 14, in one run on the same cache entry.

- before: what a hit cost until issue 14, and still costs `embed` (which writes the features out):
  open the slide, find tissue, lay the grid to build the key, then read the whole entry, tile
  features included (`embed_slide`);
- after, slide touched: the file's identity changed, so it is planned again, then only the latents
  are read (`embed_latents`, index miss);
- after: file and settings unchanged, the index gives the key: only the latents are read, the
  slide is not opened (`embed_latents`, index hit).

The entry is made with the demo encoders, then grown to `--tiles` tiles (the grid repeated) and widened
to the real sizes (Virchow 2560 per tile, Prism 513 x 1280), so the bytes a hit reads are those of a
large slide with the real encoders.
Peak memory is Python's (tracemalloc: numpy and h5py reads included). Prints a Markdown table.
Usage: python -m benchmarks.cache_hit [SLIDE] [--repeats R] [--tiles N]
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np

from antoni_bridge.encoders.demo import write_demo_slide_encoder, write_demo_tile_encoder
from antoni_bridge.encoders.pipeline import Encoders, embed_latents, embed_slide
from antoni_bridge.features.cache import FeatureCache
from antoni_bridge.features.h5 import read_feature_file, write_feature_file
from antoni_bridge.slides.planning import SlideRequest
from benchmarks.common import slide_arguments

TILE_WIDTH, LATENTS = 2560, (513, 1280)  # Virchow's tile features; Prism's latents


def measure(run: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median seconds and the largest peak of Python-allocated memory (MiB) over `repeats` runs."""
    seconds, peaks = [], []
    for _ in range(repeats):
        tracemalloc.start()
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
        peaks.append(tracemalloc.get_traced_memory()[1] / 2**20)
        tracemalloc.stop()
    return statistics.median(seconds), max(peaks)


def grow(entry: Path, tiles: int) -> None:
    """Give the cache entry `tiles` tiles with real-sized features, and real-sized latents."""
    data = read_feature_file(entry)
    rng = np.random.default_rng(0)
    data.coords = np.resize(data.coords, (tiles, 2))
    data.contour_index = np.resize(data.contour_index, tiles)
    data.features = rng.standard_normal((tiles, TILE_WIDTH), dtype=np.float32)
    data.latents = rng.standard_normal(LATENTS, dtype=np.float32)
    write_feature_file(entry, data)


def main() -> None:
    args = slide_arguments(__doc__ or "", repeats=3, tiles=20_000)
    work = Path(tempfile.mkdtemp())
    encoders = Encoders.load(str(write_demo_tile_encoder(work / "tile")), str(write_demo_slide_encoder(work / "slide")))
    cache = FeatureCache(work / "cache")
    request = SlideRequest(args.slide.resolve())
    key = embed_slide(request, encoders, cache).key  # computed once with the demo encoders
    grow(cache.entry(key), args.tiles)
    size_mib = cache.entry(key).stat().st_size / 2**20
    embed_latents(request, encoders, cache)  # indexes the entry under the file's identity

    def touched() -> None:
        stat = args.slide.stat()
        os.utime(args.slide, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
        embed_latents(request, encoders, cache)

    rows = [
        ("before: plan, then read the whole entry", lambda: embed_slide(request, encoders, cache)),
        ("after, slide touched: plan, then latents only", touched),
        ("after: index hit, latents only", lambda: embed_latents(request, encoders, cache)),
    ]
    print(f"{args.tiles:,} tiles, cache entry {size_mib:.0f} MiB; median of {args.repeats}\n")
    print("| cache hit | time | peak memory |\n|---|---:|---:|")
    for label, run in rows:
        seconds, peak = measure(run, args.repeats)
        print(f"| {label} | {seconds * 1000:.0f} ms | {peak:.1f} MiB |")


if __name__ == "__main__":
    main()
