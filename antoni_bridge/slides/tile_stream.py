"""Streaming the grid's tiles as uint8 batches, fast and in bounded memory.

The fast path decodes the stored TIFF tiles of the chosen pyramid level directly: raw bytes with
`platforms.read_at` (pread) and the page's own decoder (libjpeg-turbo and friends release the GIL), in
a thread pool, each stored tile at most once per pass because the grid is listed row by row and decoded
tiles are dropped as soon as the rows below no longer need them. A background thread keeps at most
`prefetch` batches ready, so reading overlaps encoding and memory stays bounded however large the slide.
Levels that are not plain tiled pages (and openslide formats) go through `Slide.read_region`.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from antoni_bridge import platforms
from antoni_bridge.errors import BridgeError
from antoni_bridge.slides.grid import TileGrid
from antoni_bridge.slides.reader import NativeLevel, Slide, same_file, to_rgb


@dataclass(frozen=True)
class TileBatch:
    """Consecutive grid tiles: their indices in the grid and their pixels at the read size."""

    indices: np.ndarray  # (B,) int64
    pixels: np.ndarray  # (B, read_size, read_size, 3) uint8


def default_threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def iter_tile_batches(
    slide: Slide,
    grid: TileGrid,
    batch_size: int = 64,
    start: int = 0,
    threads: int | None = None,
    prefetch: int = 2,
) -> Iterator[TileBatch]:
    """Yield the grid's tiles from index `start` on, in order, `batch_size` at a time."""
    pool = ThreadPoolExecutor(threads or default_threads(), thread_name_prefix="tile-decode")
    native = slide.native_level(grid.level)
    reader: _BatchReader = _NativeReader(slide, grid, native, pool) if native else _RegionReader(slide, grid, pool)
    bounds = [(i, min(i + batch_size, len(grid))) for i in range(start, len(grid), batch_size)]
    try:
        yield from _prefetched(((lambda a=a, b=b: reader.read(a, b)) for a, b in bounds), depth=prefetch)
    finally:
        reader.close()
        pool.shutdown(wait=True, cancel_futures=True)


class _BatchReader(Protocol):
    def read(self, first: int, stop: int) -> TileBatch: ...

    def close(self) -> None: ...


class _RegionReader:
    """One `read_region` per tile, in parallel: the path for every format and odd level layout."""

    def __init__(self, slide: Slide, grid: TileGrid, pool: ThreadPoolExecutor) -> None:
        self.slide, self.grid, self.pool = slide, grid, pool

    def read(self, first: int, stop: int) -> TileBatch:
        size = (self.grid.read_size, self.grid.read_size)
        tiles = self.pool.map(
            lambda xy: self.slide.read_region((int(xy[0]), int(xy[1])), self.grid.level, size),
            self.grid.coords[first:stop],
        )
        return TileBatch(np.arange(first, stop), np.stack(list(tiles)))

    def close(self) -> None:
        """Nothing of its own to release: the slide belongs to the caller."""


class _NativeReader:
    """Direct decoding of the stored tiles of one level, each once per pass."""

    def __init__(self, slide: Slide, grid: TileGrid, native: NativeLevel, pool: ThreadPoolExecutor) -> None:
        self.slide, self.grid, self.native, self.pool = slide, grid, native, pool
        self.fd = platforms.open_for_reading(slide.path)
        if not same_file(slide, self.fd):  # offsets come from the file opened earlier
            os.close(self.fd)
            raise BridgeError(
                f"{slide.path.name} changed on disk after it was opened.", "wait until the copy is complete"
            )
        self.decoded: dict[tuple[int, int], np.ndarray] = {}
        self.level_xy = np.floor(grid.coords / grid.level_downsample).astype(np.int64)
        self.width, self.height = slide.level_dimensions[grid.level]

    def read(self, first: int, stop: int) -> TileBatch:
        tw, th, rs = self.native.tile_width, self.native.tile_height, self.grid.read_size
        corners = self.level_xy[first:stop]
        needed = {
            (ty, tx)
            for x, y in corners
            for ty in range(y // th, min(y + rs - 1, self.height - 1) // th + 1)
            for tx in range(x // tw, min(x + rs - 1, self.width - 1) // tw + 1)
        }
        missing = sorted(needed - self.decoded.keys())
        self.decoded.update(zip(missing, self.pool.map(self._decode, missing), strict=True))
        pixels = np.full((len(corners), rs, rs, 3), 255, dtype=np.uint8)
        for out, (x, y) in zip(pixels, corners, strict=True):
            self._assemble(out, int(x), int(y))
        self._forget_rows_above(stop)
        return TileBatch(np.arange(first, stop), pixels)

    def _decode(self, key: tuple[int, int]) -> np.ndarray:
        ty, tx = key
        index = ty * self.native.tiles_across + tx
        count, offset = self.native.bytecounts[index], self.native.offsets[index]
        if count == 0:  # a sparse TIFF leaves empty tiles unwritten: they are glass
            return np.full((self.native.tile_height, self.native.tile_width, 3), 255, dtype=np.uint8)
        try:
            data = platforms.read_at(self.fd, count, offset)
            segment = self.native.page.decode(data, index, jpegtables=self.native.page.jpegtables)[0]
        except Exception as exc:  # decoders raise many types for damaged data
            raise BridgeError(
                f"{self.slide.path.name}: stored tile {tx},{ty} of level {self.grid.level} cannot be decoded ({exc}).",
                "the file is probably damaged; copy it again from the scanner or archive",
            ) from exc
        return to_rgb(segment.reshape(segment.shape[-3:]))

    def _assemble(self, out: np.ndarray, x: int, y: int) -> None:
        tw, th, rs = self.native.tile_width, self.native.tile_height, self.grid.read_size
        x1, y1 = min(x + rs, self.width), min(y + rs, self.height)
        for ty in range(y // th, (y1 - 1) // th + 1):
            for tx in range(x // tw, (x1 - 1) // tw + 1):
                tile = self.decoded[(ty, tx)]
                sx0, sy0 = max(x, tx * tw), max(y, ty * th)
                sx1, sy1 = min(x1, (tx + 1) * tw), min(y1, (ty + 1) * th)
                out[sy0 - y : sy1 - y, sx0 - x : sx1 - x] = tile[
                    sy0 - ty * th : sy1 - ty * th, sx0 - tx * tw : sx1 - tx * tw
                ]

    def _forget_rows_above(self, stop: int) -> None:
        """Drop decoded tiles no later grid tile needs (the grid is sorted by row)."""
        if stop >= len(self.level_xy):
            self.decoded.clear()
            return
        first_row = int(self.level_xy[stop:, 1].min()) // self.native.tile_height
        for key in [k for k in self.decoded if k[0] < first_row]:
            del self.decoded[key]

    def close(self) -> None:
        os.close(self.fd)


_DONE = object()


def _prefetched(jobs: Iterator[Callable[[], TileBatch]], depth: int = 2) -> Iterator[TileBatch]:
    """Run the jobs in a background thread, keeping at most `depth` results waiting."""
    results: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for job in jobs:
                if stop.is_set():
                    return
                results.put(job())
        except BaseException as exc:  # handed to the consumer, which re-raises it
            results.put(exc)
        results.put(_DONE)

    worker = threading.Thread(target=produce, name="tile-reader", daemon=True)
    worker.start()
    try:
        while (item := results.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            with contextlib.suppress(queue.Empty):
                results.get(timeout=0.05)
        worker.join()
