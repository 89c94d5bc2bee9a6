"""Tile reading on the demo slide, three ways over the same grid, in one run.

- naive: the loop users write: `read_region` per tile, then a PIL bicubic resize to 224 px;
- ours: `iter_tile_batches` (stored tiles decoded once, threads) plus a batched torch resize to 224 px;
- limit: only decoding the stored JPEG tiles the grid needs, in the same threads (no assembly).

Prints a Markdown table; ratios are what to compare across machines.
Usage: python -m benchmarks.tile_reading [SLIDE] [--threads N] [--repeats R]
"""

from __future__ import annotations

import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image

from antoni_bridge.encoders.virchow import tiles_to_tensor
from antoni_bridge.slides.grid import GridSpec, TileGrid, plan_grid
from antoni_bridge.slides.reader import Slide
from antoni_bridge.slides.tile_stream import iter_tile_batches
from antoni_bridge.slides.tissue import ThresholdTissueDetector
from benchmarks.common import slide_arguments


def naive(slide: Slide, grid: TileGrid) -> None:
    size = (grid.read_size, grid.read_size)
    for x, y in grid.coords:
        region = slide.read_region((int(x), int(y)), grid.level, size)
        Image.fromarray(region).resize((224, 224), Image.Resampling.BICUBIC)


def ours(slide: Slide, grid: TileGrid, threads: int, resize: bool) -> None:
    for batch in iter_tile_batches(slide, grid, batch_size=64, threads=threads):
        if resize:
            tiles_to_tensor(batch.pixels, 224, torch.device("cpu"))


def decode_limit(slide: Slide, grid: TileGrid, threads: int) -> int:
    """Decode each stored tile the grid touches once, nothing else."""
    native = slide.native_level(grid.level)
    assert native is not None, "the limit is defined for tiled TIFF levels"
    level_xy = np.floor(grid.coords / grid.level_downsample).astype(np.int64)
    keys = {
        ty * native.tiles_across + tx
        for x, y in level_xy
        for ty in range(y // native.tile_height, (y + grid.read_size - 1) // native.tile_height + 1)
        for tx in range(x // native.tile_width, (x + grid.read_size - 1) // native.tile_width + 1)
    }
    fd = os.open(slide.path, os.O_RDONLY)

    def decode(index: int) -> None:
        data = os.pread(fd, native.bytecounts[index], native.offsets[index])
        native.page.decode(data, index, jpegtables=native.page.jpegtables)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(decode, sorted(keys)))
    os.close(fd)
    return len(keys)


def best_rate(run, tiles: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return tiles / statistics.median(times)


def main() -> None:
    args = slide_arguments(__doc__, repeats=3)
    args.threads = args.threads or os.cpu_count() or 1
    path = args.slide
    torch.set_num_threads(args.threads)
    with Slide(path) as slide:
        grid = plan_grid(slide, ThresholdTissueDetector().detect(slide), GridSpec())
        n = len(grid)
        stored = decode_limit(slide, grid, args.threads)
        rates = {
            "naive read_region + PIL resize (1 thread)": best_rate(lambda: naive(slide, grid), n, args.repeats),
            f"ours, read only ({args.threads} threads)": best_rate(
                lambda: ours(slide, grid, args.threads, False), n, args.repeats
            ),
            f"ours, read + resize to 224 ({args.threads} threads)": best_rate(
                lambda: ours(slide, grid, args.threads, True), n, args.repeats
            ),
            f"limit: decode the {stored} stored tiles once ({args.threads} threads)": best_rate(
                lambda: decode_limit(slide, grid, args.threads), n, args.repeats
            ),
        }
    print(f"slide {path.name}: {n} tiles of {grid.read_size} px read at level {grid.level}, resized to 224\n")
    print("| method | tiles/s |\n|---|---|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:,.0f} |")
    values = list(rates.values())
    print(f"\nours (read + resize) / naive: {values[2] / values[0]:.1f}x")
    print(f"ours (read only) / decode limit: {values[1] / values[3]:.2f}")


if __name__ == "__main__":
    main()
