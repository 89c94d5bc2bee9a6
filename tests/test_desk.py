"""ANTONI Desk as a user drives it: real Qt (offscreen), a real `serve --demo` daemon, real demo slides.

Mouse and keys go through Qt's event system into the view, so drawing, asking, streaming, cancelling
and reopening are exercised the way a user does them; what a user would read (the transcript, the
message bar) is what the tests check.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt starts: no display on build machines

import pytest
from PyQt6.QtCore import QPoint, QPointF, QRectF, Qt, QTimer, QUrl
from PyQt6.QtGui import QImage, QWheelEvent
from PyQt6.QtWidgets import QApplication, QMessageBox
from pytestqt.qtbot import QtBot

from antoni_bridge.desk.window import DeskWindow
from antoni_bridge.slides.demo import DemoLayout

WAIT_MS = 60_000  # generous: other test processes share the cores; a wait ends as soon as it is met
OVER_TISSUE = (1500, 1500, 4000, 4000)  # level-0 box inside the demo slide's large piece


@pytest.fixture
def open_window(qtbot: QtBot, untrained_daemon: Path):
    """A shown window talking to the module's daemon (untrained demo weights: answers run to any length, so
    streaming and cancelling can be watched); closed (threads stopped) after the test."""

    def make(connection_file: Path = untrained_daemon, serve_args: tuple[str, ...] = ()) -> DeskWindow:
        window = DeskWindow(connection_file, serve_args)
        window.ask_before_closing = False  # pytest-qt closes the windows at teardown: no question then
        qtbot.addWidget(window)
        window.show()
        qtbot.waitExposed(window)
        return window

    return make


def open_slide(qtbot: QtBot, window: DeskWindow, path: Path) -> None:
    received = window.view.tiles_received
    window.open_slide(path)
    qtbot.waitUntil(lambda: window.slide is not None and window.slide.path == path.resolve(), timeout=WAIT_MS)
    qtbot.waitUntil(lambda: window.view.tiles_received > received, timeout=WAIT_MS)


def screen_point(window: DeskWindow, x: float, y: float):
    return window.view.mapFromScene(QPointF(x, y))


def drag_rectangle(qtbot: QtBot, window: DeskWindow, box: tuple[float, float, float, float]) -> None:
    viewport = window.view.viewport()
    start, end = screen_point(window, box[0], box[1]), screen_point(window, box[2], box[3])
    qtbot.mousePress(viewport, Qt.MouseButton.LeftButton, pos=start)
    qtbot.mouseMove(viewport, end)
    qtbot.mouseRelease(viewport, Qt.MouseButton.LeftButton, pos=end)


def ask(qtbot: QtBot, window: DeskWindow, question: str) -> None:
    window.chat.question.setText(question)
    qtbot.mouseClick(window.chat.ask_button, Qt.MouseButton.LeftButton)
    assert window.job is not None


def wait_for_the_end(qtbot: QtBot, window: DeskWindow, timeout_ms: int = WAIT_MS) -> None:
    qtbot.waitUntil(lambda: window.job is None, timeout=timeout_ms)


def test_open_draw_ask_stream_cancel_and_reopen(
    qtbot: QtBot, open_window, demo_40x: tuple[Path, DemoLayout], demo_20x: Path, tmp_path: Path
) -> None:
    window = open_window()
    slide = demo_40x[0]
    open_slide(qtbot, window, slide)
    assert not window.overview.image.isNull() and window.region_list.count() == 1  # whole slide only
    qtbot.waitUntil(lambda: window.chat.daemon_label.text().startswith("Daemon: demo weights"), timeout=WAIT_MS)

    window.actions_by_name["Rectangle"].trigger()  # Escape abandons a drawing half done
    viewport = window.view.viewport()
    qtbot.mousePress(viewport, Qt.MouseButton.LeftButton, pos=screen_point(window, 100, 100))
    qtbot.mouseMove(viewport, screen_point(window, 900, 900))
    qtbot.keyClick(window.view, Qt.Key.Key_Escape)
    assert window.view.drawer.mode is None and window.region_list.count() == 1
    window.actions_by_name["Rectangle"].trigger()
    drag_rectangle(qtbot, window, OVER_TISSUE)
    assert window.region_list.count() == 2 and window.region is not None
    assert window.region.bounds == pytest.approx(OVER_TISSUE, abs=20)  # a screen pixel is ~12 level-0 px

    decoding = window.daemon_state.decoding  # the daemon's defaults, from its hello (when it sends them)
    default = f"max tokens: default ({decoding['max_new_tokens']})" if decoding else "max tokens: default"
    assert window.chat.max_tokens.value() == 0 and window.chat.max_tokens.specialValueText() == default
    assert window.chat.options_set() == {}, "nothing is sent that the user did not set"
    window.chat.max_tokens.setValue(1500)  # the demo model's greedy answer runs to this limit
    ask(qtbot, window, "What organ is this?")
    exchange = window.job_exchange
    on_screen = window.chat.transcript.toPlainText
    qtbot.waitUntil(lambda: len(exchange.answer) > 0 and exchange.answer[:20] in on_screen(), timeout=WAIT_MS)
    assert window.job is not None, "streamed text was on screen before the answer ended"
    qtbot.mouseClick(window.chat.cancel_button, Qt.MouseButton.LeftButton)
    wait_for_the_end(qtbot, window)
    assert exchange.state == "cancelled" and "[cancelled" in window.chat.transcript.toPlainText()

    window.chat.max_tokens.setValue(12)
    tokens: list[str] = []
    ask(qtbot, window, "Is there a neoplasm?")
    window.job.event.connect(lambda kind, content: kind == "token" and tokens.append(content["text"]))
    second = window.job_exchange
    wait_for_the_end(qtbot, window)
    assert second.state == "done" and second.demo and second.answer == "".join(tokens), second
    shown = window.chat.transcript.toPlainText()
    assert second.answer.strip()[:10] in shown and "demo weights" in shown
    assert window.conversation().turns_for("next")[:2] == [
        {"role": "user", "content": "Is there a neoplasm?"},
        {"role": "assistant", "content": second.answer},
    ], "the cancelled exchange is not sent as context"

    window.export_conversation(tmp_path / "chat.md")
    window.export_conversation(tmp_path / "chat.json")
    assert "## Q" in (tmp_path / "chat.md").read_text() and "Is there a neoplasm?" in (tmp_path / "chat.md").read_text()
    exported = json.loads((tmp_path / "chat.json").read_text())
    assert [e["state"] for e in exported["exchanges"]] == ["cancelled", "done"] and exported["region"]["geometry"]
    provenance = exported["exchanges"][1]["provenance"]
    assert provenance["front_end"] == "desk" and provenance["options_set"] == {"max_new_tokens": 12}
    assert provenance["demo"] is True and provenance["weights"] and exported["exchanges"][0]["provenance"] == {}
    assert "Provenance:" in (tmp_path / "chat.md").read_text()

    open_slide(qtbot, window, demo_20x)  # another slide: its own, empty state
    assert window.region_list.count() == 1 and window.chat.transcript.toPlainText() == ""
    open_slide(qtbot, window, slide)  # reopened: regions, the picked one and its conversation come back
    assert window.region_list.count() == 2 and window.region is not None
    assert "Is there a neoplasm?" in window.chat.transcript.toPlainText()

    shot = tmp_path / "desk.png"
    window.save_screenshot(shot)
    image = QImage(str(shot))
    assert image.width() >= 1000 and len({image.pixel(x, 300) for x in range(0, image.width(), 7)}) > 20


def _glass_box(layout: DemoLayout, side: int = 480) -> tuple[int, int, int, int]:
    """A level-0 box of the demo slide with neither tissue nor pen ink in it (nor near it)."""
    empty = ~(layout.tissue | layout.pen)
    cells = side // layout.downsample + 4
    for row in range(0, empty.shape[0] - cells, cells):
        for column in range(empty.shape[1] - cells - 1, 0, -cells):
            if empty[row : row + cells, column : column + cells].all():
                x, y = (column + 2) * layout.downsample, (row + 2) * layout.downsample
                return x, y, x + side, y + side
    raise AssertionError("the demo slide has no glass")


def test_bad_input_is_one_sentence_in_the_window(
    qtbot: QtBot, open_window, demo_40x: tuple[Path, DemoLayout], tmp_path: Path
) -> None:
    window = open_window()
    not_a_slide = tmp_path / "notes.svs"
    not_a_slide.write_text("this is not a slide")
    window.open_slide(not_a_slide)
    qtbot.waitUntil(lambda: "is not a slide antoni-bridge can read" in window.messages.text, timeout=WAIT_MS)
    assert window.slide is None and "Hint:" in window.messages.label.text()

    open_slide(qtbot, window, demo_40x[0])
    x0, y0, x1, y1 = _glass_box(demo_40x[1])
    window.actions_by_name["Polygon"].trigger()  # a polygon: click the corners, double-click to close
    viewport = window.view.viewport()
    for x, y in [(x0, y0), (x1, y0), (x1, y1)]:
        qtbot.mouseClick(viewport, Qt.MouseButton.LeftButton, pos=screen_point(window, x, y))
    qtbot.mouseDClick(viewport, Qt.MouseButton.LeftButton, pos=screen_point(window, x0, y1))
    assert window.region is not None and window.region.name == "Polygon 1"
    assert len(window.region.geometry.exterior.coords) == 5  # four corners, closed
    ask(qtbot, window, "What is here?")
    wait_for_the_end(qtbot, window)
    assert "No tissue" in window.messages.text and window.conversation().exchanges[-1].state == "error"
    qtbot.mouseClick(
        window.region_list.viewport(), Qt.MouseButton.LeftButton,
        pos=window.region_list.visualItemRect(window.region_list.item(0)).center(),
    )  # fmt: skip
    assert window.region is None and window.messages.text == "", "picking another region clears the error"

    down = open_window(tmp_path / "no-daemon.json")  # no daemon behind this connection file
    open_slide(qtbot, down, demo_40x[0])
    qtbot.waitUntil(lambda: "not reachable" in down.chat.daemon_label.text(), timeout=WAIT_MS)
    ask(qtbot, down, "What organ is this?")
    wait_for_the_end(qtbot, down)
    assert "the daemon is not running" in down.messages.text and "antoni-bridge serve --demo" in down.messages.text
    assert down.chat.ask_button.isEnabled(), "the window stays usable"


def test_start_daemon_from_the_window_and_stop_it_on_close(
    qtbot: QtBot, open_window, daemon: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTONI_BRIDGE_HOME", str(daemon.parent))  # the demo weights the module's daemon built
    connection = tmp_path / "started.json"
    broken = open_window(connection, ("--demo", "--queue", "0"))
    broken.start_daemon()
    qtbot.waitUntil(lambda: "The daemon did not start" in broken.messages.text, timeout=WAIT_MS)
    assert "its output is in" in broken.messages.text and broken.daemon_process is None

    window = open_window(connection, ("--demo", "--address", "tcp://127.0.0.1:*"))
    window.start_daemon()
    qtbot.waitUntil(lambda: window.daemon_process is not None, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: window.daemon_state.running and window.daemon_state.demo, timeout=WAIT_MS)
    process = window.daemon_process
    window.close()
    assert process.poll() is not None and not connection.exists()


def wheel(view, notches: int) -> None:
    """A real wheel event at the centre of the view, as a mouse sends it."""
    centre = QPointF(view.viewport().rect().center())
    event = QWheelEvent(
        centre,
        view.viewport().mapToGlobal(centre),
        QPoint(),
        QPoint(0, 120 * notches),
        Qt.MouseButton.NoButton,
        Qt.KeyboardModifier.NoModifier,
        Qt.ScrollPhase.NoScrollPhase,
        False,
    )
    QApplication.sendEvent(view.viewport(), event)


def test_wheel_zooms_drag_pans_keys_fit(qtbot: QtBot, open_window, demo_40x: tuple[Path, DemoLayout]) -> None:
    window = open_window()
    open_slide(qtbot, window, demo_40x[0])
    view = window.view
    fitted = view.zoom()
    wheel(view, 2)
    assert view.zoom() == pytest.approx(fitted * 1.25**2)
    before = view.visible_area().center()
    viewport = view.viewport()
    middle = viewport.rect().center()
    qtbot.mousePress(viewport, Qt.MouseButton.LeftButton, pos=middle)
    qtbot.mouseMove(viewport, middle + QPoint(200, 100))
    qtbot.mouseRelease(viewport, Qt.MouseButton.LeftButton, pos=middle + QPoint(200, 100))
    moved = view.visible_area().center()
    assert moved.x() < before.x() and moved.y() < before.y(), "dragging right and down shows what lies left and up"
    qtbot.keyClick(view, Qt.Key.Key_Right)
    assert view.visible_area().center().x() > moved.x()
    qtbot.keyClick(view, Qt.Key.Key_F)
    assert view.zoom() == pytest.approx(fitted)
    assert window.region_list.count() == 1, "panning drew nothing"


def _annotation(name: str | None, box: tuple[int, int, int, int], object_type: str = "annotation") -> dict:
    x0, y0, x1, y1 = box
    properties: dict = {"objectType": object_type}
    if name:
        properties["classification"] = {"name": name}
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": properties}


def test_qupath_annotations_are_imported_to_pick_from(
    qtbot: QtBot, open_window, demo_40x: tuple[Path, DemoLayout], tmp_path: Path
) -> None:
    export = tmp_path / "annotations.geojson"
    features = [
        _annotation("Tumor", OVER_TISSUE),
        _annotation("Stroma", (5000, 1000, 6500, 2500)),
        _annotation(None, (100, 100, 200, 200), object_type="detection"),  # cells are not regions to ask about
    ]
    export.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    window = open_window()
    window.open_slide(demo_40x[0], None, export)  # as `antoni-bridge desk SLIDE --geojson FILE` does
    qtbot.waitUntil(lambda: window.region_list.count() == 3, timeout=WAIT_MS)
    assert [r.name for r in window.region_list.regions] == ["Tumor", "Stroma"]
    window.region_list.setCurrentRow(2)
    assert window.region.name == "Stroma" and "region Stroma" in window.chat.title.text()

    (tmp_path / "broken.geojson").write_text("{ not json")
    window.import_annotations(tmp_path / "broken.geojson")
    assert "is not readable GeoJSON" in window.messages.text and window.region_list.count() == 3


def _share_of_the_slide(window: DeskWindow) -> float:
    return window.view.width() / window.width()


def test_the_slide_takes_most_of_the_window_and_nothing_moves_while_asking(
    qtbot: QtBot, open_window, demo_40x: tuple[Path, DemoLayout], tmp_path: Path, daemon: Path
) -> None:
    window = open_window()
    window.resize(500, 400)  # opened while narrow, then widened: refitted
    open_slide(qtbot, window, demo_40x[0])
    export = tmp_path / "qupath.geojson"
    features = [_annotation("Tumor", OVER_TISSUE), _annotation("Stroma", (5000, 1000, 6500, 2500))]
    export.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    window.import_annotations(export)
    qtbot.waitUntil(lambda: window.chat.daemon_label.text().startswith("Daemon: demo weights"), timeout=WAIT_MS)
    window.chat.daemon_label.setText("Daemon: not reachable. " + "A very long reason that once widened the chat. " * 6)
    for width, height in [(1100, 650), (1600, 1000)]:
        window.resize(width, height)
        qtbot.waitUntil(lambda w=width: window.width() == w, timeout=WAIT_MS)
        window.region_list.setCurrentRow(0)
        slide_w, slide_h = window.slide.dimensions
        viewport = window.view.viewport()
        fits = min(viewport.width() / slide_w, viewport.height() / slide_h)
        assert window.view.zoom() == pytest.approx(fits, rel=0.02), "the slide opened narrow was refitted"
        assert _share_of_the_slide(window) > 0.6, (width, window.view.width())

    window.messages.show_message("Something to read.", "it floats over the top", level="info")
    watched = [window.view, window.chat.transcript, window.chat.question, window.overview, window.region_list]

    def places() -> list:
        return [(w.mapTo(window, QPoint(0, 0)), w.size()) for w in watched]

    before = places()
    window.region_list.setCurrentRow(1)  # the imported Tumor annotation
    window.chat.max_tokens.setValue(40)
    ask(qtbot, window, "What organ is this?")
    qtbot.waitUntil(lambda: window.job_tokens > 3, timeout=WAIT_MS)
    during = places()
    assert "generating" in window.chat.progress.text() and "of at most 40 tokens" in window.chat.progress.text()
    assert "tokens/s" in window.chat.progress.text()
    wait_for_the_end(qtbot, window)
    assert before == during == places(), "the layout kept still while the job started and ended"

    window.close()  # the docs' screenshots: `ANTONI_BRIDGE_DESK_SCREENSHOTS=docs pytest -k most_of`, with
    window = open_window(daemon)  # the shipped demo weights, whose answer to a task question makes sense
    open_slide(qtbot, window, demo_40x[0])
    window.import_annotations(export)
    window.region_list.setCurrentRow(1)
    window.chat.max_tokens.setValue(40)
    ask(qtbot, window, "Which stain is this?")  # a question of the demo task; the region lies on a DAB piece
    wait_for_the_end(qtbot, window)
    assert "DAB" in window.chat.transcript.toPlainText().split("ANTONI:")[-1]
    qtbot.waitUntil(lambda: window.chat.daemon_label.text().startswith("Daemon: demo weights"), timeout=WAIT_MS)
    shots = Path(os.environ.get("ANTONI_BRIDGE_DESK_SCREENSHOTS") or tmp_path)
    for width, height in [(1100, 650), (1600, 1000)]:
        window.resize(width, height)
        qtbot.waitUntil(lambda w=width: window.width() == w, timeout=WAIT_MS)
        assert _share_of_the_slide(window) > 0.6, (width, window.view.width())
        window.view.fit_to_window()
        qtbot.wait(2000)  # the view's tiles (some are cached already), and a fresh daemon status
        window.save_screenshot(shots / f"desk-{width}x{height}.png")


def test_start_daemon_says_it_is_starting_and_hints_name_the_demo(
    qtbot: QtBot, open_window, daemon: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTONI_BRIDGE_HOME", str(daemon.parent))  # the demo weights the module's daemon built
    connection = tmp_path / "started.json"
    down = open_window(connection)
    qtbot.waitUntil(lambda: "not reachable" in down.chat.daemon_label.text(), timeout=WAIT_MS)
    assert "antoni-bridge serve --demo" in down.chat.daemon_label.text()
    window = open_window(connection, ("--demo", "--address", "tcp://127.0.0.1:*"))
    shown: list[str] = []
    window.monitor.changed.connect(lambda state: shown.append(window.chat.daemon_label.text()))
    window.start_daemon()
    assert "starting" in window.chat.daemon_label.text()
    qtbot.waitUntil(lambda: window.daemon_state.running, timeout=WAIT_MS)
    label = window.chat.daemon_label.text
    qtbot.waitUntil(lambda: label().startswith("Daemon: demo weights"), timeout=WAIT_MS)  # its hello was read
    shown.append(label())  # the label may change after the last state change was recorded
    before = shown[: next(i for i, text in enumerate(shown) if text.startswith("Daemon: demo weights"))]
    assert before and all("starting" in text and "not reachable" not in text for text in before), shown
    window.close()


def test_a_viewer_s_basics(qtbot: QtBot, open_window, demo_40x: tuple[Path, DemoLayout], tmp_path: Path) -> None:
    window = open_window()
    open_slide(qtbot, window, demo_40x[0])
    view = window.view
    length, pixels = view.scale_bar()  # a round length in microns, at most 120 px
    assert 48 <= pixels <= 120 and f"{length:g}"[0] in "125"
    assert pixels == round(length / (0.25 / view.zoom()))
    assert (
        "(R)" in window.actions_by_name["Rectangle"].toolTip()
        and "(G)" in window.actions_by_name["Tile grid"].toolTip()
    )

    window.actions_by_name["Rectangle"].trigger()
    drag_rectangle(qtbot, window, OVER_TISSUE)
    label = window.region_list.item(1).text()
    assert label.startswith("Rectangle 1") and "625 x 625 µm, 0.39 mm²" in label, label  # 2500 px at 0.25 um/px
    fitted = view.zoom()
    window.region_list.setCurrentRow(0)
    qtbot.mouseClick(
        window.region_list.viewport(), Qt.MouseButton.LeftButton,
        pos=window.region_list.visualItemRect(window.region_list.item(1)).center(),
    )  # fmt: skip
    assert window.region.name == "Rectangle 1" and view.zoom() > 1.5 * fitted
    assert view.visible_area().contains(QRectF(1500, 1500, 2500, 2500)), "a click in the list goes to the region"

    before = view.grab()
    qtbot.keyClick(view, Qt.Key.Key_G)
    assert view.show_grid and view.grab().toImage() != before.toImage(), "G draws the encoder's tile grid"

    window.actions_by_name["Rename region"].trigger()  # F2: the name is edited in place
    item = window.region_list.item(1)
    item.setText("Tumour core")  # what the in-place editor commits
    assert window.region.name == "Tumour core" and window.conversation().title.endswith("region Tumour core")

    out = tmp_path / "regions.geojson"
    window.export_regions(out)
    from antoni_bridge.slides.regions import read_geojson_regions

    (exported,) = read_geojson_regions(out)
    assert exported.name == "Tumour core" and exported.bounds == pytest.approx(window.region.bounds)

    window.region_list.setFocus()
    qtbot.keyClick(window.region_list, Qt.Key.Key_Delete)
    assert window.region_list.count() == 1 and window.region is None


def test_import_keeps_qupath_colours_clips_and_refuses_what_lies_outside(
    qtbot: QtBot, open_window, demo_40x: tuple[Path, DemoLayout], tmp_path: Path
) -> None:
    stroma = _annotation("Stroma", (5000, 1000, 6500, 2500))
    stroma["properties"]["classification"]["color"] = [0, 160, 0]
    features = [
        _annotation("Tumor", OVER_TISSUE),  # QuPath's default Tumor colour
        stroma,
        _annotation("Edge", (7000, 5000, 9000, 7000)),  # partly outside the 8000 x 6000 slide: clipped
        _annotation("Elsewhere", (20000, 20000, 21000, 21000)),  # entirely outside: refused
    ]
    export = tmp_path / "qupath.geojson"
    export.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    window = open_window()
    open_slide(qtbot, window, demo_40x[0])
    window.import_annotations(export)
    assert [r.name for r in window.region_list.regions] == ["Tumor", "Stroma", "Edge"]
    assert "'Elsewhere'" in window.messages.text and "lies outside the slide" in window.messages.text
    assert window.region_list.regions[2].bounds == (7000, 5000, 8000, 6000)
    colours = [window.region_list.item(row).foreground().color().getRgb()[:3] for row in (1, 2)]
    assert colours == [(200, 0, 0), (0, 160, 0)]

    only_outside = tmp_path / "outside.geojson"
    only_outside.write_text(json.dumps({"type": "FeatureCollection", "features": features[3:]}))
    window.import_annotations(only_outside)
    assert "lies outside the slide (8000x6000 px)" in window.messages.text
    assert window.region_list.count() == 4


def test_closing_with_conversations_never_exported_asks_first(
    qtbot: QtBot, open_window, demo_40x: tuple[Path, DemoLayout], tmp_path: Path
) -> None:
    window = open_window()
    window.ask_before_closing = True
    open_slide(qtbot, window, demo_40x[0])
    window.chat.max_tokens.setValue(3)
    ask(qtbot, window, "What organ is this?")
    wait_for_the_end(qtbot, window)
    asked: list[str] = []

    def answer(button: QMessageBox.StandardButton) -> None:
        dialog = QApplication.activeModalWidget()
        asked.append(dialog.text())
        dialog.button(button).click()

    QTimer.singleShot(300, lambda: answer(QMessageBox.StandardButton.Cancel))
    window.close()
    assert window.isVisible() and "1 conversation(s) have not been exported" in asked[0]
    window.export_conversation(tmp_path / "kept.md")
    window.close()
    assert not window.isVisible() and len(asked) == 1, "an exported conversation closes without asking"


ON_DAB = (2000, 2000, 3400, 3400)  # level-0 box on the demo slide's DAB piece: a few tiles, a quick map
BESIDE = (2400, 2400, 3800, 3800)
MAP_WAIT_MS = 600_000  # an evidence map rescores the answer once per tile group: minutes on a loaded CPU


def test_evidence_and_prism_s_heads_through_the_daemon(
    qtbot: QtBot, open_window, demo_40x: tuple[Path, DemoLayout], patient_daemon: Path, tmp_path: Path
) -> None:
    window = open_window(patient_daemon)  # the shipped demo weights: a task question gets a sensible answer
    window.resize(1100, 650)
    open_slide(qtbot, window, demo_40x[0])
    window.actions_by_name["Rectangle"].trigger()
    drag_rectangle(qtbot, window, ON_DAB)
    window.chat.max_tokens.setValue(12)
    ask(qtbot, window, "Is there DAB staining?")
    wait_for_the_end(qtbot, window, MAP_WAIT_MS)
    answer = window.conversation().exchanges[-1]
    assert answer.state == "done" and answer.reliance is not None, answer
    assert f"Image reliance {answer.reliance['score']:.2f}" in window.chat.transcript.toPlainText()

    window.chat.transcript.anchorClicked.emit(QUrl("evidence:0"))  # "Show evidence" under the answer
    assert window.job is not None and "mapping the evidence" in window.chat.transcript.toPlainText()
    wait_for_the_end(qtbot, window, MAP_WAIT_MS)
    assert answer.evidence is not None and answer.evidence["tiles"] == len(answer.evidence["values"]) > 0
    assert window.view.heat is not None and window.overview.heat is not None and window.messages.text == ""
    shown = window.chat.transcript.toPlainText()
    assert "Hide evidence" in shown and "faithfulness gap" in shown
    window.view.go_to(window.region)  # the docs' screenshot: `ANTONI_BRIDGE_DESK_SCREENSHOTS=docs pytest -k through`
    qtbot.wait(2000)  # the view's tiles at this zoom
    window.save_screenshot(Path(os.environ.get("ANTONI_BRIDGE_DESK_SCREENSHOTS") or tmp_path) / "desk-evidence.png")

    window.tabs.setCurrentIndex(1)  # Prism
    window.prism.labels.setText("DAB staining, H&E staining")
    qtbot.mouseClick(window.prism.zero_shot_button, Qt.MouseButton.LeftButton)
    wait_for_the_end(qtbot, window, MAP_WAIT_MS)
    rows = window.prism.bars.rows
    assert sorted(label for label, _ in rows) == ["DAB staining", "H&E staining"], window.messages.text
    assert sum(p for _, p in rows) == pytest.approx(1.0, abs=1e-4)
    qtbot.mouseClick(window.prism.bars, Qt.MouseButton.LeftButton, pos=QPoint(20, 9))
    assert window.view.heat is not None and window.view.heat.title == f"Prism zero-shot: {rows[0][0]}"

    qtbot.mouseClick(window.prism.report_button, Qt.MouseButton.LeftButton)
    wait_for_the_end(qtbot, window, MAP_WAIT_MS)
    draft = window.conversation().exchanges[-1]
    assert draft.speaker == "Prism" and draft.state == "done" and draft.answer, (draft, window.messages.text)
    assert f"Draft by Prism (not ANTONI): {draft.answer[:20]}" in window.chat.transcript.toPlainText()
    assert [t["role"] for t in window.conversation().turns_for("next")] == ["user", "assistant", "user"]

    window.actions_by_name["Rectangle"].trigger()
    drag_rectangle(qtbot, window, BESIDE)  # another region: the first one, embedded above, is similar to it
    qtbot.mouseClick(window.prism.similar_button, Qt.MouseButton.LeftButton)
    wait_for_the_end(qtbot, window, MAP_WAIT_MS)
    listed = window.prism.similar
    assert listed.count() >= 1 and "(region)" in listed.item(0).text(), window.messages.text
    listed.itemClicked.emit(listed.item(0))
    assert window.region is not None and window.region.name.startswith("Similar region")
    assert window.region.bounds == pytest.approx(ON_DAB, abs=20)
