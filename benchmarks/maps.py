"""A 15,000-tile map (the issue's large slide) as files and in the desk: writing the QuPath GeoJSON, the
PNG over a 2,000 px overview, building the desk's layer, and painting it with its colour bar on a
1600 x 1000 view (offscreen Qt). The values are random; only their number matters here.

Usage: QT_QPA_PLATFORM=offscreen python -m benchmarks.maps [--tiles 15000] [--repeats 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
from PIL import Image
from PyQt6.QtGui import QImage, QPainter
from PyQt6.QtWidgets import QApplication

from antoni_bridge import maps
from antoni_bridge.desk.heatmap import draw_colour_bar, draw_layer, heat_layer

TILE = 448  # level-0 px: 224 px at 0.5 um/px on a 40x scan


def median_s(work: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiles", type=int, default=15_000)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    columns = int(np.ceil(np.sqrt(args.tiles * 4 / 3)))  # a 4:3 slide
    index = np.arange(args.tiles)
    coords = np.stack([index % columns, index // columns], axis=1).astype(np.float64) * TILE
    tile_map = maps.TileMap(coords, TILE, np.random.default_rng(0).normal(size=args.tiles))
    _app = QApplication([])
    with tempfile.TemporaryDirectory() as folder:
        geojson = Path(folder) / "map.geojson"
        write_s = median_s(lambda: maps.write_geojson(tile_map, geojson), max(3, args.repeats // 5))
        size_mib = geojson.stat().st_size / 2**20
    overview = Image.new("RGB", (2000, 1500), (240, 240, 240))
    scale = 2000 / (columns * TILE)
    picture_s = median_s(lambda: maps.heat_picture(tile_map, overview, scale), args.repeats)
    layer_s = median_s(lambda: heat_layer(tile_map, "ANTONI evidence"), args.repeats)
    layer = heat_layer(tile_map, "ANTONI evidence")
    canvas = QImage(1600, 1000, QImage.Format.Format_RGB32)
    painter = QPainter(canvas)
    painter.scale(1600 / (columns * TILE), 1600 / (columns * TILE))

    def paint() -> None:
        draw_layer(painter, layer)
        draw_colour_bar(painter, layer, 1588, 988)

    paint_s = median_s(paint, args.repeats)
    painter.end()
    print(f"{args.tiles:,} tiles; load average {os.getloadavg()[0]:.1f}")
    print(f"GeoJSON (QuPath tiles): {write_s:.3f} s, {size_mib:.1f} MiB")
    print(f"PNG picture over a 2,000 px overview (composed, not saved): {picture_s * 1000:.0f} ms")
    print(f"desk layer built: {layer_s * 1000:.1f} ms; painted with its colour bar: {paint_s * 1000:.1f} ms a frame")


if __name__ == "__main__":
    main()
