"""Pyramid tiles for the view, read on worker threads so the UI never waits on the disk or a decoder.

The view says which tiles it wants now (nearest the centre first); the loader forgets older wishes,
so a fast pan never leaves a backlog of tiles that are no longer on screen. Each worker opens the
slide itself: readers keep file handles and decoder state that are not shared across threads.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from pathlib import Path

from PyQt6.QtCore import QObject, QRectF, pyqtSignal
from PyQt6.QtGui import QImage

from antoni_bridge.errors import BridgeError
from antoni_bridge.slides.reader import Slide

TILE = 512  # level pixels per side of a view tile
CACHE_BYTES = 384 << 20

TileKey = tuple[int, int, int]  # level, column, row


def tiles_covering(area: QRectF, level: int, downsample: float, level_size: tuple[int, int]) -> list[TileKey]:
    """The tiles of `level` over `area` (level-0 pixels), nearest the area's centre first."""
    edge = TILE * downsample
    columns, rows = math.ceil(level_size[0] / TILE), math.ceil(level_size[1] / TILE)
    c0, c1 = max(0, int(area.left() // edge)), min(columns - 1, int(area.right() // edge))
    r0, r1 = max(0, int(area.top() // edge)), min(rows - 1, int(area.bottom() // edge))
    centre = area.center()
    keys = [(level, c, r) for r in range(r0, r1 + 1) for c in range(c0, c1 + 1)]
    return sorted(keys, key=lambda k: (k[1] + 0.5 - centre.x() / edge) ** 2 + (k[2] + 0.5 - centre.y() / edge) ** 2)


def tile_rect(key: TileKey, downsample: float, level_size: tuple[int, int]) -> QRectF:
    """Where a tile lies, in level-0 pixels (edge tiles are cut at the level's border)."""
    _, column, row = key
    width = min(TILE, level_size[0] - column * TILE)
    height = min(TILE, level_size[1] - row * TILE)
    return QRectF(column * TILE * downsample, row * TILE * downsample, width * downsample, height * downsample)


class TileCache:
    """Decoded tiles, least recently drawn dropped first once over a byte budget (UI thread only)."""

    def __init__(self, budget_bytes: int = CACHE_BYTES) -> None:
        self.budget, self.used = budget_bytes, 0
        self._images: OrderedDict[TileKey, QImage] = OrderedDict()

    def get(self, key: TileKey) -> QImage | None:
        image = self._images.get(key)
        if image is not None:
            self._images.move_to_end(key)
        return image

    def put(self, key: TileKey, image: QImage) -> None:
        if key in self._images:
            return
        self._images[key] = image
        self.used += image.sizeInBytes()
        while self.used > self.budget and len(self._images) > 1:
            _, old = self._images.popitem(last=False)
            self.used -= old.sizeInBytes()

    def __contains__(self, key: TileKey) -> bool:
        return key in self._images


class TileLoader(QObject):
    """Reads the tiles the view wants on `threads` worker threads and hands them back as QImages."""

    loaded = pyqtSignal(object, QImage)  # TileKey, its pixels
    failed = pyqtSignal(str, str)

    def __init__(self, path: Path, mpp: float | None, threads: int = 2) -> None:
        super().__init__()
        self.path, self.mpp = path, mpp
        self._wanted: list[TileKey] = []
        self._in_flight: set[TileKey] = set()
        self._condition = threading.Condition()
        self._closed = False
        self._failed_once = False
        self._threads = [threading.Thread(target=self._work, name="desk-tiles", daemon=True) for _ in range(threads)]
        for thread in self._threads:
            thread.start()

    def want(self, keys: list[TileKey]) -> None:
        """Replace the wish list: these tiles, in this order; tiles already being read are not asked twice."""
        with self._condition:
            self._wanted = [key for key in keys if key not in self._in_flight]
            self._condition.notify_all()

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._wanted = []
            self._condition.notify_all()
        for thread in self._threads:
            thread.join(5)

    def _next(self) -> TileKey | None:
        with self._condition:
            while not self._wanted and not self._closed:
                self._condition.wait()
            if self._closed:
                return None
            key = self._wanted.pop(0)
            self._in_flight.add(key)
            return key

    def _work(self) -> None:
        try:
            slide = Slide(self.path, mpp=self.mpp)
        except BridgeError as exc:  # the file changed or vanished since it was opened for the view
            self._fail(exc.message, exc.hint)
            return
        with slide:
            while (key := self._next()) is not None:
                try:
                    self.loaded.emit(key, read_tile(slide, key))
                except BridgeError as exc:
                    self._fail(exc.message, exc.hint)
                finally:
                    with self._condition:
                        self._in_flight.discard(key)

    def _fail(self, message: str, hint: str) -> None:
        """One message per slide: a damaged file would otherwise report every tile it cannot decode."""
        with self._condition:
            first, self._failed_once = not self._failed_once, True
        if first:
            self.failed.emit(message, hint)


def read_tile(slide: Slide, key: TileKey) -> QImage:
    level, column, row = key
    downsample = slide.level_downsamples[level]
    level_size = slide.level_dimensions[level]
    size = (min(TILE, level_size[0] - column * TILE), min(TILE, level_size[1] - row * TILE))
    location = (round(column * TILE * downsample), round(row * TILE * downsample))
    pixels = slide.read_region(location, level, size)
    height, width = pixels.shape[:2]
    image = QImage(pixels.data, width, height, 3 * width, QImage.Format.Format_RGB888)
    return image.convertToFormat(QImage.Format.Format_RGB32)  # a copy, in the format painting is fastest from
