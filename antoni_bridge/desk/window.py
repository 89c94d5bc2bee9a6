"""The main window: slide view and overview on the left, regions and chat on the right, a message bar
on top. It holds the state that outlives one slide: regions and conversations per slide and region,
so reopening a slide brings back what was drawn and asked.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PyQt6.QtCore import QPointF, Qt
from PyQt6.QtGui import QAction, QCloseEvent, QKeySequence
from PyQt6.QtWidgets import QFileDialog, QMainWindow, QSplitter, QToolBar, QVBoxLayout, QWidget

from antoni_bridge import paths
from antoni_bridge.desk.chat_panel import ChatPanel
from antoni_bridge.desk.conversations import Conversation, Exchange, export
from antoni_bridge.desk.daemon_link import AskJob, DaemonMonitor, DaemonStarter, DaemonState, stop_daemon
from antoni_bridge.desk.drawing import DrawMode
from antoni_bridge.desk.message_bar import MessageBar
from antoni_bridge.desk.opening import OpenedSlide, SlideOpener
from antoni_bridge.desk.overview import OverviewWidget
from antoni_bridge.desk.regions import RegionList, name_new_region
from antoni_bridge.desk.tile_loader import TileLoader
from antoni_bridge.desk.view import SlideView
from antoni_bridge.errors import BridgeError
from antoni_bridge.slides.regions import Region, read_geojson_regions

SLIDE_FILTER = "Slides (*.svs *.ndpi *.scn *.tif *.tiff *.mrxs *.bif *.dcm);;All files (*)"


class DeskWindow(QMainWindow):
    def __init__(self, connection_file: Path | None = None, serve_args: Sequence[str] = ()) -> None:
        """`serve_args`: how "Start daemon" runs `antoni-bridge serve` (e.g. ("--demo",))."""
        super().__init__()
        self.connection_file = connection_file or paths.connection_file()
        self.serve_args = tuple(serve_args)
        self.slide: OpenedSlide | None = None
        self.loader: TileLoader | None = None
        self.region: Region | None = None
        self.regions: dict[Path, list[Region]] = {}
        self.picked: dict[Path, Region | None] = {}
        self.conversations: dict[tuple[Path, str], Conversation] = {}
        self.job: AskJob | None = None
        self.job_conversation: Conversation | None = None
        self.job_exchange: Exchange | None = None
        self.daemon_state = DaemonState(False, message="Not checked yet.")
        self.daemon_process: subprocess.Popen[bytes] | None = None
        self.pending_annotations: Path | None = None
        self._build()
        self.monitor = DaemonMonitor(self.connection_file)
        self.monitor.changed.connect(self._daemon_changed)
        self.monitor.start()

    # ------------------------------------------------------------------ layout

    def _build(self) -> None:
        self.setWindowTitle("ANTONI Desk")
        self.messages = MessageBar()
        self.view = SlideView()
        self.overview = OverviewWidget()
        self.region_list = RegionList()
        self.chat = ChatPanel()
        self.opener = SlideOpener()
        sidebar = QWidget()
        side = QVBoxLayout(sidebar)
        side.setContentsMargins(4, 0, 0, 0)
        side.addWidget(self.overview)
        side.addWidget(self.region_list)
        side.addWidget(self.chat, 1)
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(self.view)
        splitter.addWidget(sidebar)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)
        splitter.setSizes([900, 500])
        central = QWidget()
        layout = QVBoxLayout(central)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.messages)
        layout.addWidget(splitter, 1)
        self.setCentralWidget(central)
        self._toolbar()
        self.opener.opened.connect(self._slide_opened)
        self.opener.failed.connect(self._slide_failed)
        self.view.viewport_moved.connect(self.overview.set_visible_area)
        self.view.drawer.drawn.connect(self._region_drawn)
        self.view.drawer.refused.connect(self.messages.show_message)
        self.view.drawer.mode_changed.connect(self._drawing_mode_changed)
        self.overview.centre_requested.connect(self._centre_from_overview)
        self.region_list.picked.connect(self._pick_region)
        self.chat.ask_requested.connect(self.ask)
        self.chat.cancel_requested.connect(self.cancel)
        self.chat.export_requested.connect(self._export_dialog)
        self.resize(1400, 900)

    def _toolbar(self) -> None:
        toolbar = QToolBar("Slide")
        self.addToolBar(toolbar)
        entries: list[tuple[str, str | QKeySequence.StandardKey, Any]] = [
            ("Open slide...", QKeySequence.StandardKey.Open, self._open_dialog),
            ("Import QuPath GeoJSON...", "Ctrl+I", self._import_dialog),
            ("Fit", "F", self.view.fit_to_window),
            ("Zoom in", "+", lambda: self.view.zoom_by(2.0)),
            ("Zoom out", "-", lambda: self.view.zoom_by(0.5)),
            ("Rectangle", "R", lambda: self._draw(DrawMode.RECTANGLE)),
            ("Polygon", "P", lambda: self._draw(DrawMode.POLYGON)),
            ("Start daemon", "", self.start_daemon),
        ]
        self.actions_by_name: dict[str, QAction] = {}
        for label, shortcut, slot in entries:
            action = QAction(label, self)
            if shortcut:
                action.setShortcut(QKeySequence(shortcut))
            action.triggered.connect(slot)
            toolbar.addAction(action)
            self.actions_by_name[label] = action
        weights = "the demo weights" if "--demo" in self.serve_args else "the real weights"
        self.actions_by_name["Start daemon"].setToolTip(f"Start a local daemon with {weights}")
        for name in ("Rectangle", "Polygon"):
            self.actions_by_name[name].setCheckable(True)

    # ------------------------------------------------------------------ slides

    def open_slide(self, path: Path, mpp: float | None = None, annotations: Path | None = None) -> None:
        """Open on a worker thread; the view changes when the slide is checked and its tissue found.
        `annotations`: a QuPath GeoJSON export to import once the slide is open."""
        self.messages.show_message(f"Opening {path.name}...", "", level="info")
        self.pending_annotations = annotations
        self.opener.open(path.resolve(), mpp)

    def _slide_opened(self, slide: OpenedSlide) -> None:
        self.messages.hide()
        if self.loader is not None:
            self.loader.close()
        self.slide, self.loader = slide, TileLoader(slide.path, slide.mpp_override)
        self.loader.failed.connect(self.messages.show_message)
        self.setWindowTitle(f"ANTONI Desk: {slide.path.name}")
        self.view.show_slide(slide, self.loader)
        self.overview.show_slide(slide.tissue_overview, slide.dimensions)
        self.regions.setdefault(slide.path, [])
        self._pick_region(self.picked.get(slide.path))
        if slide.tissue_problem:
            self.messages.show_message("No tissue outlines for this slide.", slide.tissue_problem, level="info")
        if self.pending_annotations is not None:
            self.import_annotations(self.pending_annotations)
            self.pending_annotations = None

    def _slide_failed(self, message: str, hint: str) -> None:
        self.messages.show_message(message, hint)

    def _open_dialog(self) -> None:
        name, _ = QFileDialog.getOpenFileName(self, "Open slide", "", SLIDE_FILTER)
        if name:
            self.open_slide(Path(name))

    # ------------------------------------------------------------------ regions

    def import_annotations(self, path: Path) -> None:
        """Add every area annotation of a QuPath GeoJSON export to the open slide's regions."""
        if self.slide is None:
            self.messages.show_message("Open a slide before importing its annotations.", "File > Open slide")
            return
        try:
            imported = read_geojson_regions(path)
        except BridgeError as exc:
            self.messages.show_message(exc.message, exc.hint)
            return
        regions = self.regions[self.slide.path]
        for region in imported:
            regions.append(name_new_region(region, "Annotation", regions))
        self._pick_region(regions[-len(imported)])
        self.messages.show_message(
            f"Imported {len(imported)} annotation(s) from {path.name}.", "pick one in the list", level="info"
        )

    def _import_dialog(self) -> None:
        name, _ = QFileDialog.getOpenFileName(self, "Import QuPath annotations", "", "GeoJSON (*.geojson *.json)")
        if name:
            self.import_annotations(Path(name))

    def _draw(self, mode: DrawMode) -> None:
        if self.slide is None:
            self.messages.show_message("Open a slide before drawing a region.", "File > Open slide")
            self._drawing_mode_changed(None)
            return
        self.view.drawer.begin(mode)
        self.view.setFocus()

    def _drawing_mode_changed(self, mode: DrawMode | None) -> None:
        self.actions_by_name["Rectangle"].setChecked(mode is DrawMode.RECTANGLE)
        self.actions_by_name["Polygon"].setChecked(mode is DrawMode.POLYGON)

    def _region_drawn(self, region: Region, kind: str) -> None:
        if self.slide is None:
            return
        regions = self.regions[self.slide.path]
        regions.append(name_new_region(region, kind, regions))
        self._pick_region(regions[-1])

    def _pick_region(self, region: Region | None) -> None:
        """Make `region` (None: the whole slide) what questions are about, and show its conversation."""
        if self.slide is None:
            return
        self.region = region
        self.picked[self.slide.path] = region
        regions = self.regions[self.slide.path]
        self.region_list.set_regions(regions, region)
        self.view.show_regions(regions, region)
        self.overview.set_regions(regions)
        self.chat.show_conversation(self.conversation())

    def _centre_from_overview(self, point: QPointF) -> None:
        self.view.centre_on(point)

    # ------------------------------------------------------------------ asking

    def conversation(self) -> Conversation | None:
        """The conversation about the open slide and picked region (made on first use)."""
        if self.slide is None:
            return None
        key = (self.slide.path, self.region.key() if self.region else "")
        if key not in self.conversations:
            self.conversations[key] = Conversation(self.slide.path, self.region)
        return self.conversations[key]

    def ask(self, question: str) -> None:
        conversation = self.conversation()
        if conversation is None:
            self.messages.show_message("Open a slide before asking about it.", "File > Open slide")
            return
        if self.job is not None:
            self.messages.show_message("A question is still being answered.", "wait for it, or cancel it")
            return
        content: dict[str, Any] = {
            "slide": str(conversation.slide),
            "conversation": conversation.turns_for(question),
            "options": {"max_new_tokens": self.chat.max_tokens.value(), "greedy": True},
        }
        if conversation.region is not None:
            content["region"] = conversation.region.to_geojson()
        if self.slide.mpp_override is not None:
            content["slide_mpp"] = self.slide.mpp_override
        self.job_conversation, self.job_exchange = conversation, Exchange(question)
        conversation.exchanges.append(self.job_exchange)
        self.messages.hide()
        self.chat.show_conversation(conversation)
        self.chat.set_busy(True)
        self.chat.set_job("Sending the question to the daemon...")
        self.job = AskJob(self.connection_file, content)
        self.job.event.connect(self._job_event)
        self.job.failed.connect(self._job_failed)
        self.job.ended.connect(self._job_ended)
        self.job.start()

    def cancel(self) -> None:
        if self.job is not None:
            self.chat.set_job("Cancelling...")
            self.job.cancel()

    def _job_event(self, type_: str, content: dict[str, Any]) -> None:
        exchange = self.job_exchange
        if exchange is None:
            return
        if type_ == "accepted":
            self.chat.set_job(_queue_text(content["position"]))
        elif type_ == "progress":
            self.chat.set_progress(content["stage"], content["done"], content["total"], content.get("rate", 0.0))
        elif type_ == "token":
            exchange.answer += content["text"]
            if self.conversation() is self.job_conversation:  # the user may have picked another region
                self.chat.add_answer_text(content["text"])
        elif type_ == "done":
            exchange.answer, exchange.state, exchange.demo = content["answer"], "done", bool(content.get("demo"))
            timings = content.get("timings", {})
            exchange.note = f"{len(content.get('token_ids', []))} tokens in {timings.get('total_s', 0.0):.2f} s"
        elif type_ == "cancelled":
            exchange.state = "cancelled"
        elif type_ in ("error", "busy"):
            hint = content.get("hint") or "wait until the daemon's queue has room, then ask again"
            self._job_failed(content.get("message", "The daemon refused the question."), hint)

    def _job_failed(self, message: str, hint: str) -> None:
        if self.job_exchange is not None:
            self.job_exchange.state, self.job_exchange.note = "error", message
        self.messages.show_message(message, hint)

    def _job_ended(self) -> None:
        """The job's thread is over: whatever ended it, the panel is ready for the next question."""
        if self.job_exchange is not None and self.job_exchange.state == "asking":  # ended without a word
            self.job_exchange.state = "error"
        self.job, self.job_conversation, self.job_exchange = None, None, None
        self.chat.set_busy(False)
        self.chat.set_job("")
        self.chat.show_conversation(self.conversation())

    # ------------------------------------------------------------------ daemon

    def _daemon_changed(self, state: DaemonState) -> None:
        self.daemon_state = state
        self.chat.set_daemon(state)
        if self.job is not None and self.job.job_id is not None and state.running:
            ahead = state.jobs_ahead(self.job.job_id)
            if ahead is not None:
                self.chat.set_job(_queue_text(ahead))

    def start_daemon(self) -> None:
        """Start a local daemon unless one answers; progress and failures go to the message bar."""
        self.messages.show_message("Starting a local daemon...", "this takes a few seconds", level="info")
        self.starter = DaemonStarter(self.serve_args, self.connection_file)
        self.starter.started.connect(self._daemon_started)
        self.starter.failed.connect(self.messages.show_message)
        self.starter.start()

    def _daemon_started(self, process: subprocess.Popen[bytes] | None) -> None:
        if process is None:
            self.messages.show_message("A daemon is already running; the desk uses it.", "", level="info")
            return
        self.daemon_process = process
        self.messages.show_message("The daemon is running.", "it stops when this window closes", level="info")

    # ------------------------------------------------------------------ export and closing

    def export_conversation(self, path: Path) -> None:
        conversation = self.conversation()
        if conversation is None or not conversation.exchanges:
            self.messages.show_message("There is nothing to export yet.", "ask a question first")
            return
        try:
            export(conversation, path)
        except OSError as exc:
            self.messages.show_message(f"Could not write {path}: {exc.strerror or exc}.", "choose another folder")
            return
        self.messages.show_message(f"Exported the conversation to {path}.", "", level="info")

    def _export_dialog(self, kind: str) -> None:
        pattern = "Markdown (*.md)" if kind == "md" else "JSON (*.json)"
        name, _ = QFileDialog.getSaveFileName(self, "Export conversation", f"conversation.{kind}", pattern)
        if name:
            self.export_conversation(Path(name))

    def save_screenshot(self, path: Path) -> None:
        """The window as drawn now, as PNG (for the docs)."""
        tmp = path.with_name(f".{path.name}.tmp.png")
        if not self.grab().save(str(tmp), "PNG"):
            raise BridgeError(f"Could not write the screenshot {path}.", "check the folder")
        tmp.replace(path)

    def closeEvent(self, event: QCloseEvent) -> None:
        """Cancel the running question, stop threads, and stop a daemon this window started."""
        if self.job is not None:
            self.job.cancel()
            self.job.wait(5)
        self.monitor.stop()
        if self.loader is not None:
            self.loader.close()
        if self.daemon_process is not None:
            stop_daemon(self.connection_file, self.daemon_process)
        super().closeEvent(event)


def _queue_text(ahead: int) -> str:
    return "Running" if ahead == 0 else f"Waiting: {ahead} job(s) ahead in the daemon's queue"
