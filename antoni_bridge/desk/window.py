"""The main window: slide view and overview on the left, regions and chat on the right, a message bar
on top. It holds the state that outlives one slide: regions and conversations per slide and region,
so reopening a slide brings back what was drawn and asked. One daemon job runs at a time, whichever
it is: an answer, the evidence map of an answer, or one of Prism's heads (zero-shot, report, similar).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PyQt6.QtCore import QPointF, Qt
from PyQt6.QtGui import QAction, QCloseEvent, QColor, QKeySequence, QResizeEvent
from PyQt6.QtWidgets import (
    QFileDialog,
    QMainWindow,
    QMessageBox,
    QScrollArea,
    QSplitter,
    QTabWidget,
    QToolBar,
    QVBoxLayout,
    QWidget,
)

from antoni_bridge import maps, paths
from antoni_bridge.client import BUSY_STAGE, saved_provenance
from antoni_bridge.desk.chat_panel import ChatPanel
from antoni_bridge.desk.conversations import PRISM, Conversation, Exchange, export
from antoni_bridge.desk.daemon_link import DaemonJob, DaemonMonitor, DaemonStarter, DaemonState, stop_daemon
from antoni_bridge.desk.drawing import DrawMode
from antoni_bridge.desk.heatmap import HeatLayer, heat_layer
from antoni_bridge.desk.message_bar import MessageBar
from antoni_bridge.desk.opening import OpenedSlide, SlideOpener
from antoni_bridge.desk.overview import OverviewWidget
from antoni_bridge.desk.prism_panel import PrismPanel, check_labels
from antoni_bridge.desk.regions import RegionList, colours_by_name, name_new_region
from antoni_bridge.desk.tile_loader import TileLoader
from antoni_bridge.desk.view import SlideView
from antoni_bridge.errors import BridgeError
from antoni_bridge.files import replacing, write_atomically
from antoni_bridge.slides.regions import Region, clip_to_slide, read_geojson_features, read_geojson_regions

SLIDE_FILTER = "Slides (*.svs *.ndpi *.scn *.tif *.tiff *.mrxs *.bif *.dcm);;All files (*)"
SIDEBAR_SHARE, SIDEBAR_MIN, SIDEBAR_MAX = 0.28, 300, 440  # the chat's width: the slide gets the rest
FRONT_END = "desk"  # as the provenance of exported answers names it
REPORT_TOKENS = 100  # the report job's default length limit
SIMILAR_TOP = 10
JOB_NAMES = {"ask": "the question", "explain": "the evidence request", "zero_shot": "the zero-shot labels",
             "report": "the report request", "similar": "the similar-slides search"}  # fmt: skip
START_HINT = (
    "start one with the toolbar's Start daemon, `antoni-bridge serve` (the real weights: needs access to the "
    "gated models on Hugging Face) or `antoni-bridge serve --demo` (demo weights: a synthetic task only, offline)"
)


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
        self.job: DaemonJob | None = None
        self.job_kind = ""
        self.explaining: Exchange | None = None  # the answer whose evidence the running job maps
        self.zero_shot_done: dict[str, Any] | None = None  # the last zero-shot result, for its label maps
        self.heat_conversation: Conversation | None = None  # what the map shown belongs to
        self.prism_conversation: Conversation | None = None  # what the zero-shot and similar results are about
        self.pending_region: Region | None = None  # a similar region to pick once its slide is open
        self.job_conversation: Conversation | None = None
        self.job_exchange: Exchange | None = None
        self.daemon_state = DaemonState(False, message="Not checked yet.")
        self.daemon_process: subprocess.Popen[bytes] | None = None
        self.pending_annotations: Path | None = None
        self.colours: dict[str, QColor] = {}  # region key -> its QuPath class colour
        self.daemon_starting = False
        self.job_tokens, self.job_generating_since = 0, 0.0
        self.job_options: dict[str, Any] = {}  # the decoding options the user set for the running job
        self.sidebar_sized_by_user = False
        self.ask_before_closing = True  # False where a script drives the window (tests, benchmarks)
        self._build()
        self.monitor = DaemonMonitor(self.connection_file)
        self.monitor.changed.connect(self._daemon_changed)
        self.monitor.start()

    # ------------------------------------------------------------------ layout

    def _build(self) -> None:
        self.setWindowTitle("ANTONI Desk")
        self.view = SlideView()
        self.overview = OverviewWidget()
        self.region_list = RegionList()
        self.chat = ChatPanel()
        self.prism = PrismPanel()
        self.opener = SlideOpener()
        sidebar = QWidget()
        side = QVBoxLayout(sidebar)
        side.setContentsMargins(4, 0, 0, 0)
        side.addWidget(self.overview)
        self.tabs = QTabWidget()
        self.tabs.addTab(self.region_list, "Regions")
        prism_scroll = QScrollArea()  # the tab may be short: its results scroll rather than squeeze the chat
        prism_scroll.setWidget(self.prism)
        prism_scroll.setWidgetResizable(True)
        self.tabs.addTab(prism_scroll, "Prism")
        self.tabs.setTabToolTip(1, "Prism's own heads: zero-shot labels, a report draft, similar slides")
        side.addWidget(self.tabs, 1)
        side.addWidget(self.chat, 2)
        sidebar.setMinimumWidth(SIDEBAR_MIN)
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(self.view)
        self.splitter.addWidget(sidebar)
        self.splitter.setStretchFactor(0, 1)  # a wider window widens the slide, not the chat
        self.splitter.setStretchFactor(1, 0)
        self.splitter.splitterMoved.connect(self._sidebar_moved)
        central = QWidget()
        layout = QVBoxLayout(central)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.splitter, 1)
        self.setCentralWidget(central)
        self.messages = MessageBar(central)
        self._toolbar()
        self.opener.opened.connect(self._slide_opened)
        self.opener.failed.connect(self._slide_failed)
        self.view.viewport_moved.connect(self.overview.set_visible_area)
        self.view.drawer.drawn.connect(self._region_drawn)
        self.view.drawer.refused.connect(self.messages.show_message)
        self.view.drawer.mode_changed.connect(self._drawing_mode_changed)
        self.overview.centre_requested.connect(self._centre_from_overview)
        self.region_list.picked.connect(self._user_picked)
        self.region_list.renamed.connect(self.rename_region)
        self.chat.ask_requested.connect(self.ask)
        self.chat.cancel_requested.connect(self.cancel)
        self.chat.export_requested.connect(self._export_dialog)
        self.chat.evidence_requested.connect(self.toggle_evidence)
        self.prism.zero_shot_requested.connect(self.zero_shot)
        self.prism.label_picked.connect(self.toggle_label_map)
        self.prism.report_requested.connect(self.draft_report)
        self.prism.similar_requested.connect(self.find_similar)
        self.prism.similar_picked.connect(self.open_similar)
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
            ("Rename region", "F2", self.region_list.edit_selected),
            ("Delete region", "Delete", lambda: self.delete_region(self.region)),
            ("Export regions...", "Ctrl+E", self._export_regions_dialog),
            ("Tile grid", "G", lambda: self.view.set_grid(self.actions_by_name["Tile grid"].isChecked())),
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
        for name in ("Rectangle", "Polygon", "Tile grid"):
            self.actions_by_name[name].setCheckable(True)
        tips = {
            "Rectangle": "Draw a rectangle: press, drag, release; Escape abandons it",
            "Polygon": "Draw a polygon: click each corner, double-click or Enter to close; Escape abandons it",
            "Tile grid": "Show the size of the tiles the encoder reads (224 px at 0.5 µm/px)",
            "Export regions...": "Write the regions as QuPath GeoJSON (File > Import objects in QuPath)",
            "Start daemon": "Start a local daemon with "
            + ("the demo weights" if "--demo" in self.serve_args else "the real weights"),
        }
        for label, action in self.actions_by_name.items():
            keys = action.shortcut().toString(QKeySequence.SequenceFormat.NativeText)
            tip = tips.get(label, label.removesuffix("..."))
            action.setToolTip(f"{tip} ({keys})" if keys else tip)

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
        self.loader.failed.connect(self._show_problem)
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
        if self.pending_region is not None:
            self._add_similar_region(self.pending_region)
            self.pending_region = None

    def _slide_failed(self, message: str, hint: str) -> None:
        self._show_problem(message, hint)

    def _show_problem(self, message: str, hint: str) -> None:
        self.messages.show_message(message, _desk_hint(hint))

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
            colours = colours_by_name(read_geojson_features(path))
        except BridgeError as exc:
            self.messages.show_message(exc.message, exc.hint)
            return
        kept, refused = [], []
        for region in imported:
            try:
                kept.append(clip_to_slide(region, *self.slide.dimensions))
            except BridgeError as exc:
                refused.append(exc.message)
        if not kept:
            self.messages.show_message(refused[0], "check that the annotations were exported from this slide")
            return
        regions = self.regions[self.slide.path]
        for region in kept:
            regions.append(name_new_region(region, "Annotation", regions))
            if region.name in colours:
                self.colours[regions[-1].key()] = colours[region.name]
        self._pick_region(regions[-len(kept)])
        if refused:
            left_out = f"{len(refused)} left out: {refused[0]}" + (" (and more)" if len(refused) > 1 else "")
            self.messages.show_message(f"Imported {len(kept)} annotation(s) from {path.name}; {left_out}",
                                       "check that the annotations were exported from this slide")  # fmt: skip
            return
        self.messages.show_message(
            f"Imported {len(kept)} annotation(s) from {path.name}.", "pick one in the list", level="info"
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
        self.region_list.set_regions(regions, region, self.slide.mpp, self.colours)
        self.view.show_regions(regions, region, self.colours)
        self.overview.set_regions(regions)
        if self.conversation() is not self.heat_conversation:  # a map belongs to its slide or region
            self._show_heat(None)
        if self.conversation() is not self.prism_conversation:  # and so do Prism's results
            self.zero_shot_done = None
            self.prism.clear()
        self.chat.show_conversation(self.conversation())

    def _user_picked(self, region: Region | None) -> None:
        """A pick in the list: the error about the last pick goes, and the view goes to the new one."""
        self.messages.clear_error()
        self._pick_region(region)
        if region is None:
            self.view.fit_to_window()
        else:
            self.view.go_to(region)

    def rename_region(self, region: Region, name: str) -> None:
        """A new name; the geometry, its colour and its conversation stay."""
        if self.slide is None or not name or name == region.name:
            self._pick_region(self.region)  # shows the old name again
            return
        regions = self.regions[self.slide.path]
        renamed = Region(region.geometry, name=name)
        regions[regions.index(region)] = renamed
        key = (self.slide.path, region.key())
        if key in self.conversations:
            self.conversations[key].region = renamed
        self._pick_region(renamed if self.region is region else self.region)

    def delete_region(self, region: Region | None) -> None:
        """Remove a region from the list; the whole slide is picked instead."""
        if self.slide is None or region is None:
            self.messages.show_message("Pick a region to delete.", "the whole slide cannot be deleted")
            return
        self.regions[self.slide.path].remove(region)
        self._pick_region(None)

    def export_regions(self, path: Path) -> None:
        """The open slide's regions as a QuPath GeoJSON FeatureCollection (names and class colours kept)."""
        regions = self.regions.get(self.slide.path, []) if self.slide else []
        if not regions:
            self.messages.show_message("There are no regions to export.", "draw or import a region first")
            return
        features = [_qupath_feature(region, self.colours.get(region.key())) for region in regions]
        collection = {"type": "FeatureCollection", "features": features}
        try:
            write_atomically(path, json.dumps(collection, indent=2, ensure_ascii=False) + "\n")
        except OSError as exc:
            self.messages.show_message(f"Could not write {path}: {exc.strerror or exc}.", "choose another folder")
            return
        self.messages.show_message(f"Exported {len(regions)} region(s) to {path}.", "", level="info")

    def _export_regions_dialog(self) -> None:
        name, _ = QFileDialog.getSaveFileName(self, "Export regions", "regions.geojson", "GeoJSON (*.geojson)")
        if name:
            self.export_regions(Path(name))

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
        conversation = self._ready("asking about it")
        if conversation is None:
            return
        content: dict[str, Any] = {**self._source(conversation), "conversation": conversation.turns_for(question)}
        self.job_options = self.chat.options_set()  # only what the user set: the daemon has the defaults
        if self.job_options:
            content["options"] = self.job_options
        self.job_conversation, self.job_exchange = conversation, Exchange(question)
        conversation.exchanges.append(self.job_exchange)
        self._start_job("ask", content)

    def _ready(self, doing: str) -> Conversation | None:
        """The conversation a new job is about, or None (and a message) while no slide is open or a job runs."""
        conversation = self.conversation()
        if conversation is None:
            self.messages.show_message(f"Open a slide before {doing}.", "File > Open slide")
            return None
        if self.job is not None:
            self.messages.show_message(f"{JOB_NAMES[self.job_kind].capitalize()} is still running.",
                                       "wait for it, or cancel it")  # fmt: skip
            return None
        return conversation

    def _source(self, conversation: Conversation) -> dict[str, Any]:
        """The protocol's source fields for the conversation's slide or region."""
        content: dict[str, Any] = {"slide": str(conversation.slide)}
        if conversation.region is not None:
            content["region"] = conversation.region.to_geojson()
        if self.slide is not None and self.slide.mpp_override is not None:
            content["slide_mpp"] = self.slide.mpp_override
        return content

    def _start_job(self, kind: str, content: dict[str, Any]) -> None:
        self.job_kind = kind
        self.job_tokens, self.job_generating_since = 0, 0.0
        self.messages.hide()
        self.chat.show_conversation(self.conversation())
        self.chat.set_busy(True)
        self.prism.set_busy(True)
        self.chat.set_job(f"Sending {JOB_NAMES[kind]} to the daemon...")
        self.job = DaemonJob(self.connection_file, kind, content)
        self.job.event.connect(self._job_event)
        self.job.failed.connect(self._job_failed)
        self.job.ended.connect(self._job_ended)
        self.job.start()

    # ------------------------------------------------------------------ evidence and Prism's heads

    def toggle_evidence(self, index: int) -> None:
        """Under an answer: map its evidence (the explain job) the first time, then show or hide the map."""
        conversation = self.conversation()
        if conversation is None or not 0 <= index < len(conversation.exchanges):
            return
        exchange = conversation.exchanges[index]
        if exchange is self.chat.evidence_shown:
            self._show_heat(None)
        elif exchange.evidence is not None:
            self._show_evidence(exchange)
        elif self._ready("mapping evidence") is not None:
            self.explaining = self.chat.evidence_running = exchange
            self.job_conversation = conversation
            turns = conversation.turns_until(exchange)
            self._start_job("explain", {**self._source(conversation), "conversation": turns, "answer": exchange.answer})

    def _show_evidence(self, exchange: Exchange) -> None:
        assert exchange.evidence is not None
        try:
            tile_map = maps.evidence_map(exchange.evidence)
        except BridgeError as exc:
            self.messages.show_message(exc.message, exc.hint)
            return
        self._show_heat(heat_layer(tile_map, f"ANTONI evidence ({exchange.evidence['method']})"), exchange)

    def _show_heat(self, layer: HeatLayer | None, exchange: Exchange | None = None, label: str = "") -> None:
        """One map at a time over the slide and in the overview; the chat and the bar list say whose."""
        self.view.set_heat(layer)
        self.overview.set_heat(layer)
        self.heat_conversation = self.conversation() if layer is not None else None
        self.chat.evidence_shown = exchange
        self.prism.bars.mark(label)
        self.chat.show_conversation(self.conversation())

    def zero_shot(self, labels: list[str]) -> None:
        problem = check_labels(labels)
        if problem is not None:
            self.messages.show_message(*problem)
            return
        conversation = self._ready("asking Prism for labels")
        if conversation is not None:
            self.job_conversation = conversation
            self._start_job("zero_shot", {**self._source(conversation), "labels": labels, "map": True})

    def toggle_label_map(self, label: str) -> None:
        """A zero-shot label's probability over the slide's tile groups (a second click hides it)."""
        if self.zero_shot_done is None or not self.zero_shot_done.get("map"):
            return
        if self.prism.bars.marked == label:
            self._show_heat(None)
            return
        tile_map = maps.zero_shot_map(self.zero_shot_done, label)
        self._show_heat(heat_layer(tile_map, f"Prism zero-shot: {label}"), label=label)

    def draft_report(self) -> None:
        """Prism's report draft, streamed into the conversation and marked as Prism's."""
        conversation = self._ready("asking Prism for a report")
        if conversation is None:
            return
        self.job_conversation, self.job_exchange = conversation, Exchange("Draft report", speaker=PRISM)
        conversation.exchanges.append(self.job_exchange)
        self._start_job("report", self._source(conversation))

    def find_similar(self) -> None:
        conversation = self._ready("looking for similar slides")
        if conversation is not None:
            self.job_conversation = conversation
            self._start_job("similar", {**self._source(conversation), "top": SIMILAR_TOP})

    def open_similar(self, result: dict[str, Any]) -> None:
        """Open a similar slide; a similar region becomes that slide's picked region."""
        path = Path(result["slide"])
        if not path.is_file():
            self.messages.show_message(f"{path} is no longer there.", "it was moved or deleted since it was indexed")
            return
        self.pending_region = None
        if result.get("region"):
            self.pending_region = Region.from_geojson_dict(result["region"], name="Similar region")
        if self.slide is not None and self.slide.path == path.resolve():
            if self.pending_region is not None:
                self._add_similar_region(self.pending_region)
                self.pending_region = None
        else:
            self.open_slide(path)

    def _add_similar_region(self, region: Region) -> None:
        if self.slide is None:
            return
        try:
            region = clip_to_slide(region, *self.slide.dimensions)
        except BridgeError as exc:
            self.messages.show_message(exc.message, "the slide changed since it was indexed")
            return
        regions = self.regions[self.slide.path]
        regions.append(name_new_region(region, "Similar region", regions))
        self._pick_region(regions[-1])
        self.view.go_to(regions[-1])

    def cancel(self) -> None:
        if self.job is not None:
            self.chat.set_job("Cancelling...")
            self.job.cancel()

    def _job_event(self, type_: str, content: dict[str, Any]) -> None:
        if type_ == "accepted":
            self.chat.set_job(_queue_text(content["position"]))
        elif type_ == "progress":
            self._progress(content)
        elif type_ == "done" and self.job_kind in ("explain", "zero_shot", "similar"):
            self._result(content)
        elif self.job_exchange is not None:
            self._exchange_event(self.job_exchange, type_, content)

    def _progress(self, content: dict[str, Any]) -> None:
        if content["stage"] == BUSY_STAGE:
            self.chat.set_job("Waiting: the daemon's queue is full (other front ends); the question is sent again")
        elif content["stage"] == "generating":
            self.job_generating_since = time.monotonic()
            self.chat.set_generation(0, self._token_limit(), 0.0)
        else:
            self.chat.set_progress(content["stage"], content["done"], content["total"], content.get("rate", 0.0))

    def _exchange_event(self, exchange: Exchange, type_: str, content: dict[str, Any]) -> None:
        """An event of a job that writes into the conversation: an answer, or Prism's draft."""
        if type_ == "token":
            self.job_tokens += 1
            elapsed = time.monotonic() - self.job_generating_since if self.job_generating_since else 0.0
            rate = self.job_tokens / elapsed if elapsed > 0 else 0.0
            self.chat.set_generation(self.job_tokens, self._token_limit(), rate)
            exchange.answer += content["text"]
            if self.conversation() is self.job_conversation:  # the user may have picked another region
                self.chat.add_answer_text(content["text"])
        elif type_ == "done" and self.job_kind == "report":
            exchange.answer, exchange.state = content["report"], "done"
            exchange.provenance = {**content.get("provenance", {}), "model": content["model"],
                                   "stop_reason": content["stop_reason"], "front_end": FRONT_END}  # fmt: skip
            exchange.note = f"{content['label']}, {content.get('timings', {}).get('total_s', 0.0):.2f} s"
        elif type_ == "done":
            exchange.answer, exchange.state, exchange.demo = content["answer"], "done", bool(content.get("demo"))
            exchange.reliance = content.get("reliance")
            known = self.daemon_state.provenance
            exchange.provenance = saved_provenance(content, known, FRONT_END, self.job_options)["provenance"]
            timings = content.get("timings", {})
            exchange.note = f"{len(content.get('token_ids', []))} tokens in {timings.get('total_s', 0.0):.2f} s"
        elif type_ == "cancelled":
            exchange.state = "cancelled"

    def _token_limit(self) -> int | None:
        return self.chat.token_limit() if self.job_kind == "ask" else REPORT_TOKENS

    def _result(self, content: dict[str, Any]) -> None:
        """The done of a job that adds no text to the conversation."""
        current = self.job_conversation is self.conversation()  # the user may have picked another region
        if self.job_kind == "explain" and self.explaining is not None:
            self.explaining.evidence = content
            self.explaining.reliance = self.explaining.reliance or content.get("reliance")
            if current:
                self._show_evidence(self.explaining)
        elif current and self.job_kind == "zero_shot":
            self.zero_shot_done, self.prism_conversation = content, self.job_conversation
            self.prism.show_zero_shot(content)
        elif current and self.job_kind == "similar":
            self.prism_conversation = self.job_conversation
            self.prism.show_similar(content)

    def _job_failed(self, message: str, hint: str) -> None:
        if self.job_exchange is not None:
            self.job_exchange.state, self.job_exchange.note = "error", message
        self._show_problem(message, hint)

    def _job_ended(self) -> None:
        """The job's thread is over: whatever ended it, the panel is ready for the next question."""
        if self.job_exchange is not None and self.job_exchange.state == "asking":  # ended without a word
            self.job_exchange.state = "error"
        self.job, self.job_conversation, self.job_exchange = None, None, None
        self.explaining = self.chat.evidence_running = None
        self.chat.set_busy(False)
        self.prism.set_busy(False)
        self.chat.set_job("")
        self.chat.show_conversation(self.conversation())

    # ------------------------------------------------------------------ daemon

    def _daemon_changed(self, state: DaemonState) -> None:
        if not state.running:
            state = DaemonState(False, message=state.message, hint=_desk_hint(state.hint))
        self.daemon_state = state
        self.chat.set_daemon(state, self.daemon_starting)
        if self.job is not None and self.job.job_id is not None and state.running:
            ahead = state.jobs_ahead(self.job.job_id)
            if ahead is not None:
                self.chat.set_job(_queue_text(ahead))

    def start_daemon(self) -> None:
        """Start a local daemon unless one answers; progress and failures go to the message bar."""
        self.messages.show_message("Starting a local daemon...", "this takes a few seconds", level="info")
        self.daemon_starting = True
        self.chat.set_daemon(self.daemon_state, starting=True)
        self.starter = DaemonStarter(self.serve_args, self.connection_file)
        self.starter.started.connect(self._daemon_started)
        self.starter.failed.connect(self._daemon_start_failed)
        self.starter.start()

    def _daemon_start_failed(self, message: str, hint: str) -> None:
        self.daemon_starting = False
        self.chat.set_daemon(self.daemon_state)
        self.messages.show_message(message, hint)

    def _daemon_started(self, process: subprocess.Popen[bytes] | None) -> None:
        self.daemon_starting = False
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
        with replacing(path, suffix=".png") as tmp:
            if not self.grab().save(str(tmp), "PNG"):
                raise BridgeError(f"Could not write the screenshot {path}.", "check the folder")

    def unsaved_conversations(self) -> list[Conversation]:
        return [c for c in self.conversations.values() if c.unsaved]

    def _close_anyway(self) -> bool:
        """Conversations live only in this window: closing with some never exported asks first."""
        unsaved = self.unsaved_conversations()
        if not unsaved or not self.ask_before_closing:
            return True
        answer = QMessageBox.question(
            self,
            "Close ANTONI Desk",
            f"{len(unsaved)} conversation(s) have not been exported and will be lost. Close anyway?\n"
            "(Cancel, then Export Markdown... or Export JSON... keeps them.)",
            QMessageBox.StandardButton.Discard | QMessageBox.StandardButton.Cancel,
            QMessageBox.StandardButton.Cancel,
        )
        return answer == QMessageBox.StandardButton.Discard

    def resizeEvent(self, event: QResizeEvent) -> None:
        """Until the user drags the divider, the chat takes SIDEBAR_SHARE of the width (within bounds)."""
        super().resizeEvent(event)
        if not self.sidebar_sized_by_user:
            width = self.splitter.width()
            side = max(SIDEBAR_MIN, min(SIDEBAR_MAX, round(width * SIDEBAR_SHARE)))
            self.splitter.setSizes([width - side, side])
        self.messages.place()

    def _sidebar_moved(self) -> None:
        self.sidebar_sized_by_user = True

    def closeEvent(self, event: QCloseEvent) -> None:
        """Cancel the running question, stop threads, and stop a daemon this window started."""
        if not self._close_anyway():
            event.ignore()
            return
        if self.job is not None:
            self.job.cancel()
            self.job.wait(5)
        self.monitor.stop()
        if self.loader is not None:
            self.loader.close()
        if self.daemon_process is not None:
            stop_daemon(self.connection_file, self.daemon_process)
        super().closeEvent(event)


def _desk_hint(hint: str) -> str:
    """Hints written for the command line, told as the desk's user can act on them."""
    if "`antoni-bridge serve`" in hint:
        return START_HINT
    if "see its log" in hint:
        return hint.replace("see its log", f"see its log ({paths.log_file()})")
    return hint


def _qupath_feature(region: Region, colour: QColor | None) -> dict[str, Any]:
    """A region as QuPath's GeoJSON writes an annotation (File > Import objects reads it back)."""
    properties: dict[str, Any] = {"objectType": "annotation", "name": region.name or ""}
    if colour is not None:
        properties["color"] = [colour.red(), colour.green(), colour.blue()]
    return {"type": "Feature", "geometry": region.to_geojson(), "properties": properties}


def _queue_text(ahead: int) -> str:
    return "Running" if ahead == 0 else f"Waiting: {ahead} job(s) ahead in the daemon's queue"
