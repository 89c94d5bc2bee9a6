"""The overview: the whole slide small, with detected tissue outlined, the regions, the map shown in the
main view (evidence or zero-shot), and the part the main view shows; clicking or dragging in it moves
the main view there."""

from __future__ import annotations

from PyQt6.QtCore import QPointF, QRectF, Qt, pyqtSignal
from PyQt6.QtGui import QColor, QImage, QMouseEvent, QPainter, QPaintEvent, QPen
from PyQt6.QtWidgets import QSizePolicy, QWidget

from antoni_bridge.desk.heatmap import HeatLayer, draw_layer
from antoni_bridge.slides.regions import Region

VIEWPORT_COLOUR = QColor(220, 30, 30)
REGION_COLOUR = QColor(255, 200, 0)


class OverviewWidget(QWidget):
    centre_requested = pyqtSignal(QPointF)  # level-0 pixels

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.image: QImage | None = None
        self.slide_size = (1, 1)
        self.visible = QRectF()
        self.regions: list[Region] = []
        self.heat: HeatLayer | None = None
        self.setMinimumHeight(160)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.setToolTip("Detected tissue is outlined in green; click to move the view there")

    def show_slide(self, image: QImage | None, slide_size: tuple[int, int]) -> None:
        self.image, self.slide_size, self.regions, self.heat = image, slide_size, [], None
        self.update()

    def set_heat(self, layer: HeatLayer | None) -> None:
        self.heat = layer
        self.update()

    def set_visible_area(self, area: QRectF) -> None:
        self.visible = area
        self.update()

    def set_regions(self, regions: list[Region]) -> None:
        self.regions = regions
        self.update()

    def _frame(self) -> tuple[QRectF, float]:
        """Where the slide is drawn in the widget (aspect kept), and widget pixels per level-0 pixel."""
        width, height = self.slide_size
        scale = min(self.width() / width, self.height() / height)
        left, top = (self.width() - width * scale) / 2, (self.height() - height * scale) / 2
        return QRectF(left, top, width * scale, height * scale), scale

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.fillRect(self.rect(), QColor(40, 40, 44))
        if self.image is None:
            return
        frame, scale = self._frame()
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        painter.drawImage(frame, self.image)
        painter.translate(frame.topLeft())
        painter.scale(scale, scale)
        if self.heat is not None:
            draw_layer(painter, self.heat)
        for region in self.regions:
            x0, y0, x1, y1 = region.bounds
            painter.setPen(_cosmetic(REGION_COLOUR))
            painter.drawRect(QRectF(x0, y0, x1 - x0, y1 - y0))
        painter.setPen(_cosmetic(VIEWPORT_COLOUR))
        painter.drawRect(self.visible.intersected(QRectF(0, 0, *self.slide_size)))

    def mousePressEvent(self, event: QMouseEvent) -> None:
        self._centre_at(event)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        if event.buttons() & Qt.MouseButton.LeftButton:
            self._centre_at(event)

    def _centre_at(self, event: QMouseEvent) -> None:
        if self.image is None:
            return
        frame, scale = self._frame()
        point = (event.position() - frame.topLeft()) / scale
        self.centre_requested.emit(point)


def _cosmetic(colour: QColor) -> QPen:
    pen = QPen(colour, 2)
    pen.setCosmetic(True)
    return pen
