"""A tile-value map (an answer's evidence, a zero-shot label's probability) as a translucent layer for
the slide view and the overview, with its colour bar.

The layer is one pixel per tile (antoni_bridge.maps.raster), drawn scaled up without smoothing, so a
15,000-tile map paints as fast as a thumbnail and looks the same as the PNG the CLI writes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PyQt6.QtCore import QPointF, QRectF, Qt
from PyQt6.QtGui import QColor, QImage, QPainter

from antoni_bridge.maps import TileMap, colours, raster

BAR_LENGTH, BAR_THICKNESS = 160, 14  # the colour bar on screen, pixels


@dataclass(frozen=True)
class HeatLayer:
    """What a painter needs: the layer image, where it lies (level-0 pixels), and the bar's legend."""

    image: QImage
    rect: QRectF
    low: float
    high: float
    title: str


def heat_layer(tile_map: TileMap, title: str) -> HeatLayer:
    rgba, (x0, y0) = raster(tile_map)
    rows, cols = rgba.shape[:2]
    pixels = np.ascontiguousarray(rgba)
    image = QImage(pixels.data, cols, rows, 4 * cols, QImage.Format.Format_RGBA8888).copy()  # owns its pixels
    side = tile_map.tile_size
    return HeatLayer(image, QRectF(x0, y0, cols * side, rows * side), *tile_map.value_range(), title)


def draw_layer(painter: QPainter, layer: HeatLayer) -> None:
    """The layer in the painter's level-0 coordinates, tiles with sharp edges."""
    painter.save()
    painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, False)
    painter.drawImage(layer.rect, layer.image)
    painter.restore()


def draw_colour_bar(painter: QPainter, layer: HeatLayer, right: float, bottom: float) -> None:
    """A horizontal bar in screen pixels with its bottom-right corner at (right, bottom): the title above,
    the smallest and largest value below its ends."""
    painter.save()
    painter.resetTransform()
    metrics = painter.fontMetrics()
    line = metrics.height()
    width = max(BAR_LENGTH, metrics.horizontalAdvance(layer.title)) + 16
    box = QRectF(right - width, bottom - BAR_THICKNESS - 2 * line - 16, width, BAR_THICKNESS + 2 * line + 16)
    painter.fillRect(box, QColor(0, 0, 0, 150))
    painter.setPen(Qt.GlobalColor.white)
    painter.drawText(QPointF(box.left() + 8, box.top() + 4 + metrics.ascent()), layer.title)
    bar = QRectF(box.left() + 8, box.top() + 6 + line, BAR_LENGTH, BAR_THICKNESS)
    ramp = np.ascontiguousarray(colours(np.linspace(0.0, 1.0, BAR_LENGTH))[None, :, :])
    painter.drawImage(bar, QImage(ramp.data, BAR_LENGTH, 1, 3 * BAR_LENGTH, QImage.Format.Format_RGB888))
    below = bar.bottom() + 2 + metrics.ascent()
    painter.drawText(QPointF(bar.left(), below), f"{layer.low:.3g}")
    high = f"{layer.high:.3g}"
    painter.drawText(QPointF(bar.right() - metrics.horizontalAdvance(high), below), high)
    painter.restore()
