"""Drawing a region on the slide: a rectangle (press, drag, release) or a polygon (click the corners,
double-click or Enter to close). Escape abandons a drawing. Points are level-0 pixels, as QuPath's."""

from __future__ import annotations

from enum import Enum

from PyQt6.QtCore import QObject, QPointF, QRectF, Qt, pyqtSignal
from PyQt6.QtGui import QColor, QPainterPath, QPen, QPolygonF
from PyQt6.QtWidgets import QGraphicsPathItem, QGraphicsScene

from antoni_bridge.errors import BridgeError
from antoni_bridge.slides.regions import Region, clip_to_slide


class DrawMode(Enum):
    RECTANGLE = "rectangle"
    POLYGON = "polygon"


class RegionDrawer(QObject):
    """The state of one drawing, its dashed preview in the scene, and the region it ends with."""

    drawn = pyqtSignal(object, str)  # the Region, "Rectangle" or "Polygon"
    refused = pyqtSignal(str, str)  # message, hint
    mode_changed = pyqtSignal(object)  # DrawMode | None

    def __init__(self, scene: QGraphicsScene) -> None:
        super().__init__()
        self.scene = scene
        self.mode: DrawMode | None = None
        self.points: list[QPointF] = []
        self.cursor: QPointF | None = None
        self.preview = QGraphicsPathItem()
        pen = QPen(QColor(255, 200, 0), 2, Qt.PenStyle.DashLine)
        pen.setCosmetic(True)  # the same width at every zoom
        self.preview.setPen(pen)
        self.preview.setZValue(10)
        scene.addItem(self.preview)

    @property
    def active(self) -> bool:
        return self.mode is not None

    def begin(self, mode: DrawMode) -> None:
        self._reset(mode)

    def cancel(self) -> None:
        self._reset(None)

    def press(self, point: QPointF) -> None:
        if self.mode is DrawMode.RECTANGLE:
            self.points = [point]
        elif self.mode is DrawMode.POLYGON:
            self.points.append(point)
        self.cursor = point
        self._update_preview()

    def move(self, point: QPointF) -> None:
        if self.points:
            self.cursor = point
            self._update_preview()

    def release(self, point: QPointF) -> None:
        if self.mode is DrawMode.RECTANGLE and self.points:
            rect = QRectF(self.points[0], point).normalized().intersected(self.scene.sceneRect())
            if rect.width() < 1 or rect.height() < 1:  # a click, not a drag
                self.points = []
                self._update_preview()
                return
            self._finish(Region.rectangle(rect.x(), rect.y(), rect.width(), rect.height()))

    def close_polygon(self, last: QPointF | None = None) -> None:
        """Double-click (at `last`, a corner too) or Enter: the polygon's corners make the region."""
        if self.mode is not DrawMode.POLYGON:
            return
        if last is not None:  # a double-click's first click may have added it already: repeats are dropped
            self.points.append(last)
        corners = _distinct(self.points)
        if len(corners) < 3:
            self.refused.emit("A polygon needs at least three corners.", "click each corner, then double-click")
            return
        ring = [[p.x(), p.y()] for p in corners]
        self._finish(Region.from_geojson_dict({"type": "Polygon", "coordinates": [[*ring, ring[0]]]}))

    def _finish(self, region: Region) -> None:
        kind = self.mode.value.capitalize() if self.mode else "Region"
        self.cancel()
        bounds = self.scene.sceneRect()
        try:
            clipped = clip_to_slide(region, round(bounds.width()), round(bounds.height()))
        except BridgeError as exc:
            self.refused.emit(exc.message, "draw it over the slide")
            return
        self.drawn.emit(clipped, kind)

    def _reset(self, mode: DrawMode | None) -> None:
        self.mode, self.points, self.cursor = mode, [], None
        self._update_preview()
        self.mode_changed.emit(mode)

    def _update_preview(self) -> None:
        path = QPainterPath()
        if self.mode is DrawMode.RECTANGLE and self.points and self.cursor is not None:
            path.addRect(QRectF(self.points[0], self.cursor).normalized())
        elif self.mode is DrawMode.POLYGON and self.points:
            points = [*self.points, self.cursor] if self.cursor is not None else self.points
            path.addPolygon(QPolygonF(points))
        self.preview.setPath(path)


def _distinct(points: list[QPointF]) -> list[QPointF]:
    """Corners without repeats: a double-click lands twice on the last one."""
    kept: list[QPointF] = []
    for point in points:
        if not kept or (point - kept[-1]).manhattanLength() > 0.5:
            kept.append(point)
    return kept
