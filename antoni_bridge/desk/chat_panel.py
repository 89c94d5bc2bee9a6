"""The chat panel: the conversation about the picked slide or region, the question box, the job's
progress (stage, done/total, tiles/s), its queue position, cancel, exports, and the daemon's state.
Under each answer: its image reliance (flagged when the answer does not depend on the slide) and a
"Show evidence" link that maps, then shows or hides, which parts of the slide the answer depends on.

Tokens can arrive a thousand a second; they are gathered and added to the transcript a few times a
second so the text layout never holds up the UI thread.
"""

from __future__ import annotations

import html
from typing import Any

from PyQt6.QtCore import Qt, QTimer, QUrl, pyqtSignal
from PyQt6.QtGui import QTextCursor
from PyQt6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from antoni_bridge.desk.conversations import ANTONI, PRISM_LABEL, Conversation, Exchange, describe_end, reliance_text
from antoni_bridge.desk.daemon_link import DaemonState

FLUSH_MS = 50
MAX_TOKENS = 8192  # the daemon's own bound
STAGE_UNITS = {"tile-embedding": "tiles/s"}


class ChatPanel(QWidget):
    ask_requested = pyqtSignal(str)
    cancel_requested = pyqtSignal()
    export_requested = pyqtSignal(str)  # "md" or "json"
    evidence_requested = pyqtSignal(int)  # the index of the exchange whose evidence to show or hide

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.daemon_label = _fixed_lines(QLabel("Daemon: looking for it..."), 3)
        self.title = _fixed_lines(QLabel("No slide open"), 2)
        self.transcript = QTextBrowser()
        self.transcript.setOpenExternalLinks(False)
        self.transcript.setOpenLinks(False)  # links are the desk's own commands (evidence:N)
        self.transcript.anchorClicked.connect(self._link_clicked)
        self.evidence_shown: Exchange | None = None  # whose map the view shows
        self.evidence_running: Exchange | None = None  # whose map is being made
        self.question = QLineEdit()
        self.question.setPlaceholderText("Ask about the slide or the picked region, then press Enter")
        self.ask_button, self.cancel_button = QPushButton("Ask"), QPushButton("Cancel")
        self.max_tokens = QSpinBox()  # 0: the daemon's default, which the desk does not send
        self.max_tokens.setRange(0, MAX_TOKENS)
        self.max_tokens.setValue(0)
        self.max_tokens.setPrefix("max tokens ")
        self.default_decoding: dict[str, Any] = {}
        self._show_default_decoding()
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.progress.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)  # its text never widens it
        self.job_label = _fixed_lines(QLabel(""), 1)
        self.export_md, self.export_json = QPushButton("Export Markdown..."), QPushButton("Export JSON...")
        self._pending_text = ""
        self._flush_timer = QTimer(self)
        self._flush_timer.setInterval(FLUSH_MS)
        self._flush_timer.timeout.connect(self.flush)
        self._layout()
        self.question.returnPressed.connect(self._ask)
        self.ask_button.clicked.connect(self._ask)
        self.cancel_button.clicked.connect(self.cancel_requested.emit)
        self.export_md.clicked.connect(lambda: self.export_requested.emit("md"))
        self.export_json.clicked.connect(lambda: self.export_requested.emit("json"))
        self.set_busy(False)

    def _layout(self) -> None:
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.daemon_label)
        layout.addWidget(self.title)
        layout.addWidget(self.transcript, 1)
        row = QHBoxLayout()
        row.addWidget(self.question, 1)
        row.addWidget(self.ask_button)
        row.addWidget(self.cancel_button)
        layout.addLayout(row)
        job = QHBoxLayout()
        job.addWidget(self.progress, 1)
        job.addWidget(self.max_tokens)
        layout.addLayout(job)
        layout.addWidget(self.job_label)
        exports = QHBoxLayout()
        exports.addWidget(self.export_md)
        exports.addWidget(self.export_json)
        layout.addLayout(exports)

    def _link_clicked(self, url: QUrl) -> None:
        if url.scheme() == "evidence":
            self.evidence_requested.emit(int(url.path()))

    def _ask(self) -> None:
        question = self.question.text().strip()
        if question and self.ask_button.isEnabled():
            self.ask_requested.emit(question)

    # ------------------------------------------------------------------ what the window tells it

    def show_conversation(self, conversation: Conversation | None) -> None:
        """Render a whole conversation (after a switch, or when an exchange ends)."""
        self.flush()
        self._pending_text = ""
        self.title.setText(conversation.title if conversation else "No slide open")
        marks = (self.evidence_shown, self.evidence_running)
        self.transcript.setHtml(_html(conversation, *marks) if conversation else "")
        self.transcript.moveCursor(QTextCursor.MoveOperation.End)

    def add_answer_text(self, text: str) -> None:
        """A streamed piece of the answer being shown; drawn with the next flush."""
        self._pending_text += text
        if not self._flush_timer.isActive():
            self._flush_timer.start()

    def flush(self) -> None:
        self._flush_timer.stop()
        if self._pending_text:
            cursor = self.transcript.textCursor()
            cursor.movePosition(QTextCursor.MoveOperation.End)
            cursor.insertText(self._pending_text)
            self._pending_text = ""
            self.transcript.setTextCursor(cursor)
            self.transcript.ensureCursorVisible()

    def set_busy(self, busy: bool) -> None:
        self.ask_button.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)
        if busy:
            self.question.clear()
            self.progress.setRange(0, 0)  # busy until the first progress event
            self.progress.setFormat("sending")
        else:
            self.progress.setRange(0, 1)
            self.progress.setValue(0)
            self.progress.setFormat("")

    def set_progress(self, stage: str, done: int, total: int, rate: float) -> None:
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)
        speed = f", {rate:,.0f} {STAGE_UNITS.get(stage, 'steps/s')}" if rate > 0 else ""
        self.progress.setFormat(f"{stage} {done:,}/{total:,}{speed}")

    def options_set(self) -> dict[str, Any]:
        """The decoding options the user set: only these are sent, the daemon's defaults fill the rest."""
        return {"max_new_tokens": self.max_tokens.value()} if self.max_tokens.value() else {}

    def token_limit(self) -> int | None:
        """The answer's length limit: the user's, else the daemon's default (None while it is unknown)."""
        return self.max_tokens.value() or self.default_decoding.get("max_new_tokens")

    def set_generation(self, tokens: int, limit: int | None, rate: float) -> None:
        """While the answer streams: tokens so far against the limit (when known), and their rate."""
        speed = f", {rate:,.1f} tokens/s" if rate > 0 else ""
        if limit is None:
            self.progress.setRange(0, 0)
            self.progress.setFormat(f"generating {tokens:,} tokens{speed}")
            return
        self.progress.setRange(0, max(limit, 1))
        self.progress.setValue(min(tokens, limit))
        self.progress.setFormat(f"generating {tokens:,} of at most {limit:,} tokens{speed}")

    def set_job(self, text: str) -> None:
        self.job_label.setText(text)

    def set_daemon(self, state: DaemonState, starting: bool = False) -> None:
        """The daemon's line; `starting`: this window is starting one, so "not reachable" is expected."""
        if not state.running and starting:
            self.daemon_label.setText("Daemon: starting a local one (a few seconds; the first start builds weights)...")
        elif state.running:
            weights = "demo weights (a synthetic task only, no pathology)" if state.demo else "real weights"
            running = state.queue.get("running")
            waiting = len(state.queue.get("waiting", []))
            load = f"busy, {waiting} waiting" if running else "idle"
            self.daemon_label.setText(f"Daemon: {weights}, {load}, at {state.address}")
        else:
            self.daemon_label.setText(f"Daemon: not reachable. {state.message} Hint: {state.hint}")
        self.daemon_label.setToolTip(self.daemon_label.text())
        if state.running and state.decoding != self.default_decoding:
            self.default_decoding = dict(state.decoding)
            self._show_default_decoding()

    def _show_default_decoding(self) -> None:
        """The spin box at 0 names the daemon's default (from its `hello`, once it says)."""
        limit = self.default_decoding.get("max_new_tokens")
        self.max_tokens.setSpecialValueText(f"max tokens: default ({limit})" if limit else "max tokens: default")
        decoding = ", ".join(f"{k} {v}" for k, v in self.default_decoding.items()) or "as the daemon's defaults"
        self.max_tokens.setToolTip(
            f"The answer's length limit. Default: the daemon's decoding ({decoding}); set a number to override it."
        )


def _fixed_lines(label: QLabel, lines: int) -> QLabel:
    """A wrapping label of constant height: its text changing never moves what lies below it, nor widens
    the panel (text beyond the lines is cut; the tooltip holds it whole)."""
    label.setWordWrap(True)
    label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
    label.setFixedHeight(label.fontMetrics().lineSpacing() * lines + 4)
    label.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
    return label


def _html(conversation: Conversation, shown: Exchange | None = None, running: Exchange | None = None) -> str:
    """The transcript; the answer being streamed is last, so streamed text can be appended at the end."""
    parts = []
    for index, exchange in enumerate(conversation.exchanges):
        parts.append(f"<p><b>You:</b> {html.escape(exchange.question)}</p>")
        end = "" if exchange.state == "asking" else f"<p><i>[{html.escape(describe_end(exchange))}]</i></p>"
        if exchange.speaker == ANTONI:
            parts.append(f"<p><b>ANTONI:</b> {html.escape(exchange.answer)}</p>{end}")
        else:  # a draft by another model: marked as such, in its own colour
            parts.append(f'<p style="color:#7a3e00"><b>{PRISM_LABEL}:</b> {html.escape(exchange.answer)}</p>{end}')
        if exchange.state == "done" and exchange.speaker == ANTONI:
            parts.append(_evidence_line(index, exchange, shown, running))
    return "".join(parts)


def _evidence_line(index: int, exchange: Exchange, shown: Exchange | None, running: Exchange | None) -> str:
    """The reliance figure (flagged answers in red) and the evidence control, under an answer."""
    pieces = []
    if exchange.reliance:
        colour = "#c00000" if exchange.reliance.get("flagged") else "#555555"
        mark = "&#9888; " if exchange.reliance.get("flagged") else ""
        pieces.append(f'<span style="color:{colour}">{mark}{html.escape(reliance_text(exchange.reliance))}</span>')
    if exchange is running:
        pieces.append("<i>mapping the evidence...</i>")
    else:
        word = "Hide evidence" if exchange is shown else "Show evidence"
        pieces.append(f'<a href="evidence:{index}">{word}</a>')
    if exchange.evidence is not None:
        gap = exchange.evidence["faithfulness"]["gap"]
        pieces.append(f"faithfulness gap {gap:.2g} ({html.escape(exchange.evidence['method'])})")
    return "<p>" + " &middot; ".join(pieces) + "</p>"
