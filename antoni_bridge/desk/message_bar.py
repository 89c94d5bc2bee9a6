"""The message bar: what went wrong in one sentence and what to do in a hint, across the top of the window,
until the user closes it or the next message replaces it. Never a traceback.

It floats over the top of the window's content instead of taking a row of the layout, so a message
coming or going never moves the slide or the chat."""

from __future__ import annotations

import html

from PyQt6.QtCore import Qt
from PyQt6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QWidget

STYLES = {
    "error": "background: #fbe3e3; color: #5c1010; border: 1px solid #d98c8c;",
    "info": "background: #e3eefb; color: #10305c; border: 1px solid #8cb0d9;",
}


class MessageBar(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setTextFormat(Qt.TextFormat.RichText)
        close = QPushButton("Close")
        close.clicked.connect(self.hide)
        self.setAutoFillBackground(True)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(8, 4, 8, 4)
        layout.addWidget(self.label, 1)
        layout.addWidget(close)
        self.message, self.hint, self.level = "", "", "info"
        self.hide()

    def show_message(self, message: str, hint: str = "", level: str = "error") -> None:
        self.message, self.hint, self.level = message, hint, level
        text = f"<b>{html.escape(message)}</b>" + (f"<br>Hint: {html.escape(hint)}" if hint else "")
        self.label.setText(text)
        self.setStyleSheet(f"QLabel {{ {STYLES[level]} padding: 6px; }}")
        self.show()
        self.place()

    def place(self) -> None:
        """Across the top of the parent, as tall as the text needs; above everything else."""
        parent = self.parentWidget()
        if parent is not None:
            width = parent.width()
            height = self.layout().totalHeightForWidth(width)
            self.setGeometry(0, 0, width, height if height > 0 else self.sizeHint().height())
            self.raise_()

    def clear_error(self) -> None:
        """An error is about what the user did last; once they do something else it goes."""
        if self.level == "error":
            self.hide()

    @property
    def text(self) -> str:
        """The sentence and hint shown now ("" when hidden), as plain text."""
        return f"{self.message} {self.hint}".strip() if not self.isHidden() else ""
