"""The slide view: pyramid tiles painted lazily under pannable, zoomable regions.

The scene is in level-0 pixels, so regions drawn here are already in QuPath's coordinates. Painting
never reads the slide: it draws the tiles already decoded (and the thumbnail where one is missing) and
tells the loader which tiles to read next; each tile that arrives repaints only its own rectangle.
"""

from __future__ import annotations

import math

from PyQt6.QtCore import QPointF, QRectF, Qt, pyqtSignal
from PyQt6.QtGui import (
    QColor,
    QImage,
    QKeyEvent,
    QMouseEvent,
    QPainter,
    QPainterPath,
    QPen,
    QPolygonF,
    QResizeEvent,
    QWheelEvent,
)
from PyQt6.QtWidgets import QGraphicsPathItem, QGraphicsScene, QGraphicsView, QWidget

from antoni_bridge.desk.drawing import DrawMode, RegionDrawer
from antoni_bridge.desk.heatmap import HeatLayer, draw_colour_bar, draw_layer
from antoni_bridge.desk.opening import OpenedSlide
from antoni_bridge.desk.tile_loader import (
    TILE,
    TileCache,
    TileKey,
    TileLoader,
    tile_rect,
    tiles_covering,
)
from antoni_bridge.slides.levels import coarsest_level
from antoni_bridge.slides.regions import Region

WHEEL_STEP = 1.25  # zoom factor per wheel notch
SCALE_BAR_PX = 120  # the scale bar's longest length on screen
ENCODER_TILE_UM = 224 * 0.5  # the tiles the encoder reads: 224 px at 0.5 um/px
MAX_SCALE = 4.0  # screen pixels per level-0 pixel at the closest zoom
BACKGROUND = QColor(60, 60, 64)
REGION_COLOUR, SELECTED_COLOUR = QColor(0, 190, 255), QColor(255, 200, 0)


class SlideView(QGraphicsView):
    """Wheel zooms at the cursor, dragging pans, and drawing tools take the mouse while active."""

    viewport_moved = pyqtSignal(QRectF)  # the visible part of the slide, level-0 pixels

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setScene(QGraphicsScene(self))
        self.drawer = RegionDrawer(self.scene())
        self.drawer.mode_changed.connect(self._drawing_changed)
        self.slide: OpenedSlide | None = None
        self.loader: TileLoader | None = None
        self.cache = TileCache()
        self.tiles_received = 0  # for the benchmark: tiles decoded and handed to the view
        self._region_items: list[QGraphicsPathItem] = []
        self.fitted = False  # the whole slide is fitted and the user has not zoomed or panned since
        self.show_grid = False
        self.heat: HeatLayer | None = None  # a map over the slide (evidence, zero-shot), with its colour bar
        self.setDragMode(QGraphicsView.DragMode.ScrollHandDrag)
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)
        self.setResizeAnchor(QGraphicsView.ViewportAnchor.AnchorViewCenter)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        self.setBackgroundBrush(BACKGROUND)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)

    # ------------------------------------------------------------------ slide and tiles

    def show_slide(self, slide: OpenedSlide, loader: TileLoader) -> None:
        """Show a newly opened slide, fitted to the window; the previous loader is closed by the caller."""
        self.drawer.cancel()
        self.slide, self.loader, self.cache, self.heat = slide, loader, TileCache(), None
        loader.loaded.connect(self._tile_loaded)
        width, height = slide.dimensions
        margin = max(width, height) * 0.5  # lets a corner of the slide be panned to the middle
        self.scene().setSceneRect(QRectF(0, 0, width, height))
        self.setSceneRect(QRectF(-margin, -margin, width + 2 * margin, height + 2 * margin))
        self.fit_to_window()

    def drawBackground(self, painter: QPainter, rect: QRectF) -> None:
        """Draw the decoded tiles over `rect`, then ask the loader for what the whole view still lacks."""
        painter.fillRect(rect, BACKGROUND)
        if self.slide is None or self.loader is None:
            return
        slide = self.slide
        bounds = QRectF(0, 0, *slide.dimensions)
        level = coarsest_level(slide.level_downsamples, 1 / self.zoom())
        downsample, level_size = slide.level_downsamples[level], slide.level_dimensions[level]
        area = rect.intersected(bounds)
        if not area.isEmpty():
            painter.drawImage(bounds, slide.thumbnail)
            for key in tiles_covering(area, level, downsample, level_size):
                image = self.cache.get(key)
                if image is not None:
                    painter.drawImage(tile_rect(key, downsample, level_size), image)
        edge = TILE * downsample  # one ring of tiles around the view is read ahead for the next pan
        ahead = self.visible_area().adjusted(-edge, -edge, edge, edge).intersected(bounds)
        self.loader.want([k for k in tiles_covering(ahead, level, downsample, level_size) if k not in self.cache])

    def _tile_loaded(self, key: TileKey, image: QImage) -> None:
        if self.slide is None or self.sender() is not self.loader:  # a tile of a slide closed since
            return
        self.tiles_received += 1
        self.cache.put(key, image)
        level = key[0]
        rect = tile_rect(key, self.slide.level_downsamples[level], self.slide.level_dimensions[level])
        self.viewport().update(self.mapFromScene(rect).boundingRect().adjusted(-1, -1, 1, 1))

    # ------------------------------------------------------------------ zoom and pan

    def zoom(self) -> float:
        """Screen pixels per level-0 pixel."""
        return self.transform().m11()

    def fit_to_window(self) -> None:
        """The whole slide in view; it stays fitted through resizes until the user zooms or pans."""
        if self.slide is not None:
            self.fitInView(QRectF(0, 0, *self.slide.dimensions), Qt.AspectRatioMode.KeepAspectRatio)
            self.fitted = True
            self._moved()

    def go_to(self, region: Region) -> None:
        """Show the region whole, with a margin, no closer than MAX_SCALE."""
        x0, y0, x1, y1 = region.bounds
        margin = 0.15 * max(x1 - x0, y1 - y0)
        self.fitInView(QRectF(x0 - margin, y0 - margin, x1 - x0 + 2 * margin, y1 - y0 + 2 * margin),
                       Qt.AspectRatioMode.KeepAspectRatio)  # fmt: skip
        if self.zoom() > MAX_SCALE:
            self.scale(MAX_SCALE / self.zoom(), MAX_SCALE / self.zoom())
        self.fitted = False
        self._moved()

    def zoom_by(self, factor: float) -> None:
        """Zoom around the point under the mouse (or the centre), within the fit/2 .. MAX_SCALE range."""
        if self.slide is None:
            return
        self.fitted = False
        width, height = self.slide.dimensions
        fit = min(self.viewport().width() / width, self.viewport().height() / height)
        target = min(MAX_SCALE, max(fit / 2, self.zoom() * factor))
        self.scale(target / self.zoom(), target / self.zoom())
        self._moved()

    def centre_on(self, point: QPointF) -> None:
        self.fitted = False
        self.centerOn(point)
        self._moved()

    def pan_by(self, dx: int, dy: int) -> None:
        """Move the view by screen pixels, as a drag would."""
        self.fitted = False
        self.horizontalScrollBar().setValue(self.horizontalScrollBar().value() + dx)
        self.verticalScrollBar().setValue(self.verticalScrollBar().value() + dy)

    def visible_area(self) -> QRectF:
        return self.mapToScene(self.viewport().rect()).boundingRect()

    def wheelEvent(self, event: QWheelEvent) -> None:
        notches = event.angleDelta().y() / 120
        if notches:
            self.zoom_by(WHEEL_STEP**notches)
        event.accept()

    def scrollContentsBy(self, dx: int, dy: int) -> None:
        super().scrollContentsBy(dx, dy)
        self._moved()

    def resizeEvent(self, event: QResizeEvent) -> None:
        """A fitted slide is fitted again: one opened while the view was narrow fills it once it widens."""
        super().resizeEvent(event)
        if self.fitted:
            self.fit_to_window()
        self._moved()

    # ------------------------------------------------------------------ scale bar and tile grid

    def scale_bar(self) -> tuple[float, int]:
        """A round length in microns (1, 2 or 5 times a power of ten) and its length on screen, at most
        SCALE_BAR_PX pixels."""
        if self.slide is None:
            return 0.0, 0
        um_per_px = self.slide.mpp / self.zoom()
        most = SCALE_BAR_PX * um_per_px
        power = 10 ** math.floor(math.log10(most))
        length = max(step * power for step in (1, 2, 5) if step * power <= most)
        return length, round(length / um_per_px)

    def drawForeground(self, painter: QPainter, rect: QRectF) -> None:
        if self.slide is None:
            return
        if self.heat is not None:
            draw_layer(painter, self.heat)
            draw_colour_bar(painter, self.heat, self.viewport().width() - 12, self.viewport().height() - 12)
        if self.show_grid:
            self._draw_grid(painter, rect)
        length, pixels = self.scale_bar()
        painter.save()
        painter.resetTransform()
        left, bottom = 16, self.viewport().height() - 16
        painter.fillRect(QRectF(left - 6, bottom - 26, pixels + 12, 34), QColor(0, 0, 0, 140))
        painter.fillRect(QRectF(left, bottom - 4, pixels, 4), Qt.GlobalColor.white)
        painter.setPen(Qt.GlobalColor.white)
        painter.drawText(QPointF(left, bottom - 9), _length_text(length))
        painter.restore()

    def grid_step(self) -> float:
        """The side of the encoder's tiles in level-0 pixels."""
        return ENCODER_TILE_UM / self.slide.mpp if self.slide else 0.0

    def _draw_grid(self, painter: QPainter, rect: QRectF) -> None:
        """The size of the tiles the encoder reads, as a lattice over the slide (when at least 6 px on screen)."""
        step = self.grid_step()
        if step * self.zoom() < 6:
            return
        area = rect.intersected(QRectF(0, 0, *self.slide.dimensions))
        pen = QPen(QColor(255, 255, 255, 90), 1)
        pen.setCosmetic(True)
        painter.setPen(pen)
        x = math.ceil(area.left() / step) * step
        while x <= area.right():
            painter.drawLine(QPointF(x, area.top()), QPointF(x, area.bottom()))
            x += step
        y = math.ceil(area.top() / step) * step
        while y <= area.bottom():
            painter.drawLine(QPointF(area.left(), y), QPointF(area.right(), y))
            y += step

    def set_heat(self, layer: HeatLayer | None) -> None:
        """Show a map over the slide (None: none)."""
        self.heat = layer
        self.viewport().update()

    def set_grid(self, shown: bool) -> None:
        self.show_grid = shown
        self.viewport().update()

    def _moved(self) -> None:
        self.viewport_moved.emit(self.visible_area())

    # ------------------------------------------------------------------ regions and drawing

    def show_regions(
        self, regions: list[Region], selected: Region | None, colours: dict[str, QColor] | None = None
    ) -> None:
        """Regions in their QuPath class colour where they have one; the picked one thicker, in yellow."""
        for item in self._region_items:
            self.scene().removeItem(item)
        colours = colours or {}
        self._region_items = []
        for region in regions:
            colour = SELECTED_COLOUR if region is selected else colours.get(region.key(), REGION_COLOUR)
            self._region_items.append(self._region_item(region, colour, region is selected))

    def _region_item(self, region: Region, colour: QColor, selected: bool) -> QGraphicsPathItem:
        path = QPainterPath()
        for polygon in getattr(region.geometry, "geoms", [region.geometry]):
            for ring in [polygon.exterior, *polygon.interiors]:
                path.addPolygon(_qpolygon(ring.coords))
                path.closeSubpath()
        item = QGraphicsPathItem(path)
        pen = QPen(colour, 3 if selected else 2)
        pen.setCosmetic(True)
        item.setPen(pen)
        item.setZValue(5)
        self.scene().addItem(item)
        return item

    def _drawing_changed(self, mode: DrawMode | None) -> None:
        """While drawing, the mouse draws instead of panning."""
        drag = QGraphicsView.DragMode.NoDrag if mode is not None else QGraphicsView.DragMode.ScrollHandDrag
        self.setDragMode(drag)

    def mousePressEvent(self, event: QMouseEvent) -> None:
        if self.drawer.active and event.button() == Qt.MouseButton.LeftButton:
            self.drawer.press(self.mapToScene(event.position().toPoint()))
        else:
            self.fitted = False  # a drag pans
            super().mousePressEvent(event)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        if self.drawer.active:
            self.drawer.move(self.mapToScene(event.position().toPoint()))
        else:
            super().mouseMoveEvent(event)

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        if self.drawer.active and event.button() == Qt.MouseButton.LeftButton:
            self.drawer.release(self.mapToScene(event.position().toPoint()))
        else:
            super().mouseReleaseEvent(event)

    def mouseDoubleClickEvent(self, event: QMouseEvent) -> None:
        if self.drawer.active:
            self.drawer.close_polygon(self.mapToScene(event.position().toPoint()))
        else:
            super().mouseDoubleClickEvent(event)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        key = event.key()
        if key == Qt.Key.Key_Escape and self.drawer.active:
            self.drawer.cancel()
        elif key in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and self.drawer.active:
            self.drawer.close_polygon()
        elif key in _ARROWS:
            dx, dy = _ARROWS[key]
            step = min(self.viewport().width(), self.viewport().height()) // 4
            self.pan_by(dx * step, dy * step)
        else:
            super().keyPressEvent(event)


_ARROWS = {Qt.Key.Key_Left: (-1, 0), Qt.Key.Key_Right: (1, 0), Qt.Key.Key_Up: (0, -1), Qt.Key.Key_Down: (0, 1)}


def _length_text(um: float) -> str:
    return f"{um / 1000:g} mm" if um >= 1000 else f"{um:g} µm"


def _qpolygon(coords: object) -> QPolygonF:  # coords: a shapely ring's coordinates
    return QPolygonF([QPointF(x, y) for x, y in coords])
