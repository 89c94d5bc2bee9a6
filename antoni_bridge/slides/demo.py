"""Demo slides: pyramidal, JPEG-tiled Aperio SVS files built from real stained pixels.

Each slide holds one to four tissue pieces of random shape, size and position on glass-like
background, each painted with real pixels of one stain: H&E from CMU-1 (CC0, see demo_pixels/README.md)
or DAB immunohistochemistry from scikit-image's IHC sample. A pen stroke and specks of debris (smaller
than tissue detection keeps) are added so tissue detection has something to reject. The layout (which
piece is where, and its stain) is returned at a low resolution: it is the truth the demo task's
questions are answered from, and tests compare tissue detection with it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from skimage import data as skdata
from skimage import draw
from tqdm import tqdm

from antoni_bridge.files import replacing

LAYOUT_UM = 8.0  # one layout pixel: 16 level-0 pixels at 0.5 um/px, so 20x and 40x scans share one layout
GLASS_RGB = (242, 240, 244)
PEN_RGB = (20, 110, 60)
STAINS = ("H&E", "DAB")
BLOCK = 256  # edge of the texture blocks pieces are tiled with
GAP = 0.06  # least space between pieces, as a fraction of the slide's shorter side
DEMO_SEED = 17  # the demo slide's layout: two DAB pieces and one H&E piece, set apart
DEBRIS_UM = 40.0  # radius of a debris speck: about 5,000 um², under the tissue detector's 20,000 um²


@dataclass(frozen=True)
class Piece:
    """One tissue piece: its stain and where it is, in level-0 pixels."""

    stain: str  # "H&E" or "DAB"
    centre: tuple[float, float]
    radius: float  # the piece lies within this distance of its centre
    hole: tuple[float, float] | None = None  # the centre of a hole through it, if any

    def inside(self, box: tuple[float, float, float, float]) -> bool:
        """Whether the piece's centre lies in the level-0 box (x, y, width, height)."""
        x, y, w, h = box
        return x <= self.centre[0] < x + w and y <= self.centre[1] < y + h


@dataclass(frozen=True)
class DemoLayout:
    """Where the demo slide has tissue (numbered pieces) and pen ink, at 1/downsample of level 0."""

    labels: np.ndarray  # 0 glass or debris, i + 1 inside pieces[i]
    pen: np.ndarray
    pieces: tuple[Piece, ...]
    debris: np.ndarray
    downsample: int

    @property
    def tissue(self) -> np.ndarray:
        return self.labels > 0


def demo_layout(width: int, height: int, seed: int = DEMO_SEED, mpp: float = 0.5) -> DemoLayout:
    """One to four pieces placed at random without touching, a pen stroke, and debris, drawn from `seed`."""
    rng = np.random.default_rng(seed)
    downsample = max(1, round(LAYOUT_UM / mpp))
    w, h = -(-width // downsample), -(-height // downsample)
    labels = np.zeros((h, w), dtype=np.int8)
    circles = _place(rng, w, h, int(rng.integers(1, 5)))
    stains = _stains(rng, len(circles))
    pieces = []
    for index, ((cx, cy, r), stain) in enumerate(zip(circles, stains, strict=True), 1):
        hole = _draw_piece(rng, labels, index, cx, cy, r)
        to_level0 = downsample
        pieces.append(
            Piece(
                stain,
                (cx * to_level0, cy * to_level0),
                r * to_level0,
                hole and (hole[0] * to_level0, hole[1] * to_level0),
            )
        )
    pen = np.zeros((h, w), dtype=bool)
    corner = rng.uniform(0.03, 0.2, 2)
    _strip(pen, (corner[0], corner[1]), (corner[0] + rng.uniform(0.15, 0.3), corner[1] - 0.03), 0.012 * min(w, h))
    pen &= labels == 0
    debris = np.zeros((h, w), dtype=bool)
    radius = DEBRIS_UM / LAYOUT_UM
    for _ in range(int(rng.integers(1, 4))):
        x, y = rng.uniform(0.05, 0.95) * w, rng.uniform(0.05, 0.95) * h
        rr, cc = draw.disk((y, x), max(1.0, radius), shape=debris.shape)
        debris[rr, cc] = True
    debris &= (labels == 0) & ~pen
    return DemoLayout(labels=labels, pen=pen, pieces=tuple(pieces), debris=debris, downsample=downsample)


def _stains(rng: np.random.Generator, count: int) -> list[str]:
    """The slide's stains: all H&E, all DAB or (with two or more pieces) both, each equally likely."""
    kinds = ["H&E", "DAB", "both"] if count > 1 else ["H&E", "DAB"]
    kind = kinds[int(rng.integers(len(kinds)))]
    if kind != "both":
        return [kind] * count
    stains = ["H&E", "DAB"] + [STAINS[int(rng.integers(2))] for _ in range(count - 2)]
    return [stains[i] for i in rng.permutation(count)]


def _place(rng: np.random.Generator, w: int, h: int, count: int) -> list[tuple[float, float, float]]:
    """Circles (x, y, radius) inside the slide that keep GAP apart; fewer when the slide is full."""
    side = min(w, h)
    circles: list[tuple[float, float, float]] = []
    for _ in range(400):
        if len(circles) == count:
            break
        r = rng.uniform(0.14, 0.26) * side
        x, y = rng.uniform(r + 0.03 * w, w - r - 0.03 * w), rng.uniform(r + 0.03 * h, h - r - 0.03 * h)
        if all(math.hypot(x - cx, y - cy) > r + cr + GAP * side for cx, cy, cr in circles):
            circles.append((x, y, r))
    return circles


def _draw_piece(rng: np.random.Generator, labels: np.ndarray, index: int, cx: float, cy: float, r: float):
    """A wobbly ellipse (sometimes with a hole) or a needle core, within radius `r` of the centre;
    returns the hole's centre (layout pixels) or None."""
    angle = rng.uniform(0, np.pi)
    if rng.uniform() < 0.25:  # a needle core
        dx, dy = 0.95 * r * math.cos(angle), 0.95 * r * math.sin(angle)
        _strip_pixels(labels, (cx - dx, cy - dy), (cx + dx, cy + dy), rng.uniform(0.35, 0.45) * r, index)
        return None
    rx, ry = r * rng.uniform(0.75, 0.92), r * rng.uniform(0.45, 0.92)
    theta = np.linspace(0, 2 * np.pi, 360, endpoint=False)
    phase = rng.uniform(0, 2 * np.pi, 2)
    wobble = 1 + 0.06 * np.sin(5 * theta + phase[0]) + 0.03 * np.sin(11 * theta + phase[1])
    x, y = rx * wobble * np.cos(theta), ry * wobble * np.sin(theta)
    rows = cy + x * math.sin(angle) + y * math.cos(angle)
    cols = cx + x * math.cos(angle) - y * math.sin(angle)
    rr, cc = draw.polygon(rows, cols, shape=labels.shape)
    labels[rr, cc] = index
    if rng.uniform() < 0.3 and min(rx, ry) > 0.5 * r:  # a vessel or a tear through it
        rr, cc = draw.ellipse(cy, cx, 0.3 * ry, 0.3 * rx, shape=labels.shape, rotation=angle)
        labels[rr, cc] = 0
        return (cx, cy)
    return None


def _strip(mask: np.ndarray, start: tuple[float, float], end: tuple[float, float], width: float) -> None:
    """A thick straight band from `start` to `end` (fractions of width, height)."""
    h, w = mask.shape
    _strip_pixels(mask, (start[0] * w, start[1] * h), (end[0] * w, end[1] * h), width, True)


def _strip_pixels(mask: np.ndarray, start: tuple[float, float], end: tuple[float, float], width: float, value) -> None:
    (x0, y0), (x1, y1) = start, end
    length = math.hypot(x1 - x0, y1 - y0)
    nx, ny = -(y1 - y0) / length * width / 2, (x1 - x0) / length * width / 2
    rows = [y0 + ny, y1 + ny, y1 - ny, y0 - ny]
    cols = [x0 + nx, x1 + nx, x1 - nx, x0 - nx]
    rr, cc = draw.polygon(rows, cols, shape=mask.shape)
    mask[rr, cc] = value


@cache
def stain_blocks(stain: str) -> tuple[np.ndarray, ...]:
    """BLOCK-pixel blocks of one stain's real pixels, in all eight mirror and rotation variants."""
    if stain == "H&E":
        source = resources.files("antoni_bridge.slides").joinpath("demo_pixels/he-blocks.jpg")
        with source.open("rb") as f:
            stacked = np.asarray(Image.open(f).convert("RGB"))
        blocks = [stacked[i : i + BLOCK] for i in range(0, stacked.shape[0], BLOCK)]
    else:
        ihc = skdata.immunohistochemistry()
        blocks = [ihc[y : y + BLOCK, x : x + BLOCK] for y in (0, BLOCK) for x in (0, BLOCK)]
    return tuple(
        np.ascontiguousarray(np.rot90(b[:, ::-1] if flip else b, k))
        for b in blocks
        for flip in (0, 1)
        for k in range(4)
    )


class _Painter:
    """Paints level-0 rows of a demo slide from its layout and the stains' texture blocks."""

    def __init__(self, layout: DemoLayout, width: int, seed: int, mpp: float) -> None:
        self.layout = layout
        self.width = width
        noise = np.random.default_rng(seed).integers(-3, 4, size=(BLOCK, width, 1), dtype=np.int16)
        self.glass = np.clip(np.asarray(GLASS_RGB, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
        zoom = max(1, round(0.5 / mpp))  # the stains' pixels are ~0.5 um/px: keep their size in microns
        self.blocks = {stain: [b.repeat(zoom, 0).repeat(zoom, 1) for b in stain_blocks(stain)] for stain in STAINS}
        self.block = BLOCK * zoom
        blocks_x = -(-width // self.block)
        self.choice = np.random.default_rng(seed + 1).integers(0, 1 << 30, size=(4096, blocks_x))
        self.columns = np.arange(width) // layout.downsample
        stain_of = np.array([-1] + [STAINS.index(p.stain) for p in layout.pieces], dtype=np.int8)
        self.stain = stain_of[layout.labels]  # -1 glass, else the index in STAINS

    def rows(self, y0: int, y1: int) -> np.ndarray:
        layout_rows = np.arange(y0, y1) // self.layout.downsample
        stain = self._full(self.stain, layout_rows)
        out = self.glass[np.arange(y0, y1) % BLOCK]
        for index, name in enumerate(STAINS):
            where = (stain == index) | (self._full(self.layout.debris, layout_rows) & (index == 0))
            if where.any():
                out = np.where(where[..., None], self._texture(name, y0, y1), out)
        pen = self._full(self.layout.pen, layout_rows)
        if pen.any():
            out[pen] = (0.8 * np.asarray(PEN_RGB) + 0.2 * out[pen]).astype(np.uint8)
        return out

    def _full(self, small: np.ndarray, layout_rows: np.ndarray) -> np.ndarray:
        """A layout array at level-0 resolution for these rows."""
        return small[layout_rows][:, self.columns]

    def _texture(self, stain: str, y0: int, y1: int) -> np.ndarray:
        blocks = self.blocks[stain]
        out = np.empty((y1 - y0, self.width, 3), dtype=np.uint8)
        y = y0
        while y < y1:
            by, ly = divmod(y, self.block)
            take = min(self.block - ly, y1 - y)
            for bx in range(-(-self.width // self.block)):
                x0 = bx * self.block
                x1 = min(x0 + self.block, self.width)
                block = blocks[self.choice[by % 4096, bx] % len(blocks)]
                out[y - y0 : y - y0 + take, x0:x1] = block[ly : ly + take, : x1 - x0]
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
    width: int = 10_000,
    height: int = 7_500,
    mpp: float = 0.5,
    downsamples: tuple[int, ...] = (4, 16),
    tile: int = 240,
    quality: int = 85,
    seed: int = DEMO_SEED,
    progress: bool = True,
) -> DemoLayout:
    """Write a demo slide to `out` (atomically) and return its layout."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    layout = demo_layout(width, height, seed, mpp)
    painter = _Painter(layout, width, seed, mpp)
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
        block = np.asarray(Image.fromarray(np.ascontiguousarray(rows[:h, :w])).reduce(d))  # box average
        start = y0 // d
        take = min(block.shape[0], level.shape[0] - start)
        level[start : start + take] = block[:take]
