"""Prism's own heads on the slide's latents: zero-shot labels (a probability per label, as a small bar
list; a click on a label shows its map over the slide), a report draft (written into the conversation,
marked as Prism's), and the most similar slides embedded on this machine (a click opens one).

Prism is a different model from ANTONI: everything here says so.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from PyQt6.QtCore import QRectF, QSize, Qt, pyqtSignal
from PyQt6.QtGui import QColor, QIcon, QMouseEvent, QPainter, QPaintEvent
from PyQt6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from antoni_bridge.maps import colours

ROW_PX = 18
MAX_LABELS = 64  # the zero_shot job's bound


class BarList(QWidget):
    """Labels with their probabilities as horizontal bars, most probable first; a click picks a label."""

    picked = pyqtSignal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.rows: list[tuple[str, float]] = []
        self.marked = ""  # the label whose map is shown
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setCursor(Qt.CursorShape.PointingHandCursor)

    def set_rows(self, labels: list[str], probabilities: list[float]) -> None:
        self.rows = sorted(zip(labels, probabilities, strict=True), key=lambda row: -row[1])
        self.marked = ""
        self.setFixedHeight(ROW_PX * len(self.rows) + 2)
        self.setToolTip("Click a label to show its probability over the slide" if self.rows else "")
        self.update()

    def mark(self, label: str) -> None:
        self.marked = label
        self.update()

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        name_width = min(self.width() // 2, 160)
        bar_room = self.width() - name_width - 52
        colour = QColor(*colours(0.75).tolist())
        for row, (label, probability) in enumerate(self.rows):
            top = row * ROW_PX + 1
            painter.setPen(Qt.GlobalColor.black)
            font = painter.font()
            font.setBold(label == self.marked)
            painter.setFont(font)
            text = painter.fontMetrics().elidedText(label, Qt.TextElideMode.ElideRight, name_width - 6)
            painter.drawText(QRectF(0, top, name_width - 6, ROW_PX), Qt.AlignmentFlag.AlignVCenter, text)
            painter.fillRect(QRectF(name_width, top + 3, max(1.0, bar_room * probability), ROW_PX - 6), colour)
            painter.drawText(
                QRectF(name_width + bar_room + 4, top, 48, ROW_PX), Qt.AlignmentFlag.AlignVCenter, f"{probability:.0%}"
            )

    def mousePressEvent(self, event: QMouseEvent) -> None:
        row = int(event.position().y() // ROW_PX)
        if 0 <= row < len(self.rows):
            self.picked.emit(self.rows[row][0])


class PrismPanel(QWidget):
    zero_shot_requested = pyqtSignal(list)  # the labels
    label_picked = pyqtSignal(str)  # show this label's map
    report_requested = pyqtSignal()
    similar_requested = pyqtSignal()
    similar_picked = pyqtSignal(dict)  # one result of the `similar` job

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.labels = QLineEdit()
        self.labels.setPlaceholderText("Zero-shot labels, comma separated")
        self.labels.setToolTip("Prism's zero-shot classification: a probability per label for the slide or region")
        self.zero_shot_button = QPushButton("Zero-shot")
        self.bars = BarList()
        self.report_button = QPushButton("Draft report")
        self.report_button.setToolTip("Prism writes a short report draft into the conversation (not ANTONI)")
        self.similar_button = QPushButton("Similar slides")
        self.similar_button.setToolTip("The slides and regions embedded on this machine closest to this one")
        self.similar = QListWidget()
        self.similar.setToolTip("Click one to open it")
        self.similar.setIconSize(QSize(48, 48))
        self.note = QLabel("")
        self.note.setWordWrap(True)
        self._layout()
        self.labels.returnPressed.connect(self._zero_shot)
        self.zero_shot_button.clicked.connect(self._zero_shot)
        self.bars.picked.connect(self.label_picked.emit)
        self.report_button.clicked.connect(self.report_requested.emit)
        self.similar_button.clicked.connect(self.similar_requested.emit)
        self.similar.itemClicked.connect(lambda item: self.similar_picked.emit(item.data(Qt.ItemDataRole.UserRole)))

    def _layout(self) -> None:
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        row = QHBoxLayout()
        row.addWidget(self.labels, 1)
        row.addWidget(self.zero_shot_button)
        layout.addLayout(row)
        layout.addWidget(self.bars)
        buttons = QHBoxLayout()
        buttons.addWidget(self.report_button)
        buttons.addWidget(self.similar_button)
        layout.addLayout(buttons)
        layout.addWidget(self.note)
        layout.addWidget(self.similar, 1)

    def _zero_shot(self) -> None:
        labels = [label.strip() for label in self.labels.text().split(",") if label.strip()]
        self.zero_shot_requested.emit(labels)

    def set_busy(self, busy: bool) -> None:
        for button in (self.zero_shot_button, self.report_button, self.similar_button):
            button.setEnabled(not busy)

    def clear(self) -> None:
        """No results: those shown were about another slide or region."""
        self.bars.set_rows([], [])
        self.similar.clear()
        self.note.setText("")

    def show_zero_shot(self, done: dict[str, Any]) -> None:
        self.bars.set_rows(done["labels"], done["probabilities"])
        self.note.setText("Prism zero-shot (not ANTONI)" + ("; click a label for its map" if done.get("map") else ""))

    def show_similar(self, done: dict[str, Any]) -> None:
        """Closest first, each with its similarity; the item keeps the result for a click to open."""
        self.similar.clear()
        for result in done["results"]:
            where = " (region)" if result.get("region") else ""
            item = QListWidgetItem(f"{result['similarity']:.3f}  {Path(result['slide']).name}{where}")
            item.setToolTip(html.escape(result["slide"]))
            item.setData(Qt.ItemDataRole.UserRole, result)
            if result.get("thumbnail") and Path(result["thumbnail"]).is_file():
                item.setIcon(QIcon(result["thumbnail"]))
            self.similar.addItem(item)
        self.note.setText(f"{len(done['results'])} closest of {done['indexed']:,} slides and regions indexed")


def check_labels(labels: list[str]) -> tuple[str, str] | None:
    """Why these labels cannot be asked about (message, hint), or None."""
    if len(labels) < 2:
        return "Zero-shot needs at least two labels.", 'type them comma separated, e.g. "tumour, normal tissue"'
    if len(labels) > MAX_LABELS:
        return f"Zero-shot takes at most {MAX_LABELS} labels, not {len(labels)}.", "leave some out"
    if len(set(labels)) < len(labels):
        return "Two zero-shot labels are the same.", "give each label once"
    return None
