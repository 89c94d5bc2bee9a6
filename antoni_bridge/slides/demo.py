"""The demo slide: a pyramidal, JPEG-tiled Aperio SVS built from real histology pixels.

The only real histology image available offline is scikit-image's immunohistochemistry sample; the
demo tiles it (with mirror and rotation variants so it does not look like wallpaper) inside several
tissue pieces of different shapes, one with a hole, on a glass-like background, and adds a pen mark
so tissue detection has something to reject. The layout is returned at a low resolution so tests can
compare detection with the truth.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from skimage import data as skdata
from skimage import draw
from tqdm import tqdm

from antoni_bridge.files import replacing

LAYOUT_DOWNSAMPLE = 16
GLASS_RGB = (242, 240, 244)
PEN_RGB = (20, 110, 60)


@dataclass(frozen=True)
class DemoLayout:
    """Where the demo slide has tissue and pen ink, at 1/LAYOUT_DOWNSAMPLE of level 0."""

    tissue: np.ndarray
    pen: np.ndarray
    downsample: int = LAYOUT_DOWNSAMPLE


def demo_layout(width: int, height: int, seed: int = 0) -> DemoLayout:
    """Tissue pieces and a pen stroke placed by fractions of the slide, so any size looks alike."""
    rng = np.random.default_rng(seed)
    w, h = -(-width // LAYOUT_DOWNSAMPLE), -(-height // LAYOUT_DOWNSAMPLE)
    tissue = np.zeros((h, w), dtype=bool)
    scale = min(w, h)

    def blob(cx: float, cy: float, rx: float, ry: float, value: bool = True) -> None:
        theta = np.linspace(0, 2 * np.pi, 360, endpoint=False)
        phase = rng.uniform(0, 2 * np.pi, 3)
        wobble = 1 + 0.07 * np.sin(5 * theta + phase[0]) + 0.04 * np.sin(11 * theta + phase[1])
        rows = cy * h + ry * scale * wobble * np.sin(theta)
        cols = cx * w + rx * scale * wobble * np.cos(theta)
        rr, cc = draw.polygon(rows, cols, shape=tissue.shape)
        tissue[rr, cc] = value

    blob(0.27, 0.45, 0.26, 0.31)  # a large resection piece
    blob(0.70, 0.33, 0.20, 0.26)  # a piece with a hole (a vessel or a tear)
    blob(0.70, 0.33, 0.08, 0.10, value=False)
    blob(0.22, 0.86, 0.10, 0.07)  # a small round piece
    blob(0.47, 0.12, 0.035, 0.03)  # a fragment
    _strip(tissue, (0.52, 0.80), (0.93, 0.70), 0.05 * scale)  # a needle core
    pen = np.zeros_like(tissue)
    _strip(pen, (0.04, 0.08), (0.30, 0.05), 0.012 * scale)
    pen &= ~tissue
    return DemoLayout(tissue=tissue, pen=pen)


def _strip(mask: np.ndarray, start: tuple[float, float], end: tuple[float, float], width: float) -> None:
    """A thick straight band from `start` to `end` (fractions of width, height)."""
    h, w = mask.shape
    (x0, y0), (x1, y1) = (start[0] * w, start[1] * h), (end[0] * w, end[1] * h)
    length = math.hypot(x1 - x0, y1 - y0)
    nx, ny = -(y1 - y0) / length * width / 2, (x1 - x0) / length * width / 2
    rows = [y0 + ny, y1 + ny, y1 - ny, y0 - ny]
    cols = [x0 + nx, x1 + nx, x1 - nx, x0 - nx]
    rr, cc = draw.polygon(rows, cols, shape=mask.shape)
    mask[rr, cc] = True


class _Painter:
    """Paints level-0 rows of the demo slide from the layout and the texture variants."""

    def __init__(self, layout: DemoLayout, width: int, seed: int) -> None:
        ihc = skdata.immunohistochemistry()
        self.variants = [np.rot90(ihc, k) for k in range(4)] + [np.rot90(ihc[:, ::-1], k) for k in range(4)]
        self.block = ihc.shape[0]
        self.layout = layout
        self.width = width
        self.rng = np.random.default_rng(seed)
        blocks_x = -(-width // self.block)
        self.choice = np.random.default_rng(seed + 1).integers(0, 8, size=(10_000, blocks_x))
        self.columns = np.arange(width) // layout.downsample

    def rows(self, y0: int, y1: int) -> np.ndarray:
        texture = self._texture(y0, y1)
        layout_rows = np.arange(y0, y1) // self.layout.downsample
        tissue = self.layout.tissue[layout_rows[:, None], self.columns[None, :]]
        pen = self.layout.pen[layout_rows[:, None], self.columns[None, :]]
        out = np.empty((y1 - y0, self.width, 3), dtype=np.uint8)
        glass = self.rng.integers(-3, 4, size=(y1 - y0, self.width, 1), dtype=np.int16)
        out[:] = np.clip(np.asarray(GLASS_RGB, dtype=np.int16) + glass, 0, 255).astype(np.uint8)
        out[tissue] = texture[tissue]
        ink = (0.8 * np.asarray(PEN_RGB) + 0.2 * out[pen]).astype(np.uint8)
        out[pen] = ink
        return out

    def _texture(self, y0: int, y1: int) -> np.ndarray:
        out = np.empty((y1 - y0, self.width, 3), dtype=np.uint8)
        y = y0
        while y < y1:
            by, ly = divmod(y, self.block)
            take = min(self.block - ly, y1 - y)
            for bx in range(-(-self.width // self.block)):
                x0 = bx * self.block
                x1 = min(x0 + self.block, self.width)
                variant = self.variants[self.choice[by % 10_000, bx]]
                out[y - y0 : y - y0 + take, x0:x1] = variant[ly : ly + take, : x1 - x0]
            y += take
        return out


def _aperio_description(width: int, height: int, tile: int, quality: int, mpp: float) -> str:
    magnification = round(10.0 / mpp)
    return (
        f"Aperio Image Library v12.0.15 \r\n{width}x{height} [0,0 {width}x{height}] ({tile}x{tile}) "
        f"JPEG/RGB Q={quality}|AppMag = {magnification}|MPP = {mpp}|ScannedBy = antoni-bridge demo"
    )


def write_demo_slide(
    out: str | os.PathLike[str],
    width: int = 20_000,
    height: int = 15_000,
    mpp: float = 0.25,
    downsamples: tuple[int, ...] = (4, 16),
    tile: int = 240,
    quality: int = 85,
    seed: int = 0,
    progress: bool = True,
) -> DemoLayout:
    """Write the demo slide to `out` (atomically) and return its layout."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    layout = demo_layout(width, height, seed)
    painter = _Painter(layout, width, seed)
    band = math.lcm(tile, *downsamples)
    reduced = [np.empty((height // d, width // d, 3), dtype=np.uint8) for d in downsamples]

    def level0_tiles() -> Iterator[np.ndarray]:
        bar = tqdm(total=height, desc="demo slide", unit="row", disable=not progress, leave=False)
        for y0 in range(0, height, band):
            rows = painter.rows(y0, min(y0 + band, height))
            _accumulate(rows, y0, downsamples, reduced)
            yield from _tiles_of(rows, tile)
            bar.update(rows.shape[0])
        bar.close()

    description = _aperio_description(width, height, tile, quality, mpp)
    with replacing(out) as tmp, tifffile.TiffWriter(tmp, bigtiff=width * height * 3 > 2**31) as tif:
        options = {
            "compression": "jpeg",
            "compressionargs": {"level": quality},
            "photometric": "rgb",
            "metadata": None,
        }
        tif.write(
            level0_tiles(),
            shape=(height, width, 3),
            dtype=np.uint8,
            tile=(tile, tile),
            description=description,
            resolution=(1e4 / mpp, 1e4 / mpp),
            resolutionunit="CENTIMETER",
            **options,
        )
        thumb = reduced[-1]
        tif.write(thumb, description=f"{description}\r\nthumbnail", photometric="rgb", metadata=None)
        for image in reduced:
            tif.write(image, tile=(tile, tile), description=description, **options)
    return layout


def _tiles_of(rows: np.ndarray, tile: int) -> Iterator[np.ndarray]:
    """Cut a band of whole rows into TIFF tiles in row-major order, padding the right and bottom edges."""
    h, w, _ = rows.shape
    for ty in range(0, h, tile):
        for tx in range(0, w, tile):
            piece = rows[ty : ty + tile, tx : tx + tile]
            if piece.shape[:2] != (tile, tile):
                padded = np.full((tile, tile, 3), GLASS_RGB, dtype=np.uint8)
                padded[: piece.shape[0], : piece.shape[1]] = piece
                piece = padded
            yield piece


def _accumulate(rows: np.ndarray, y0: int, downsamples: tuple[int, ...], reduced: list[np.ndarray]) -> None:
    """Area-average a band into each lower pyramid level, as scanners build their pyramids."""
    for d, level in zip(downsamples, reduced, strict=True):
        h, w = (rows.shape[0] // d) * d, level.shape[1] * d
        block = rows[:h, :w].reshape(h // d, d, w // d, d, 3).mean(axis=(1, 3))
        start = y0 // d
        take = min(block.shape[0], level.shape[0] - start)
        level[start : start + take] = block[:take].round().astype(np.uint8)
