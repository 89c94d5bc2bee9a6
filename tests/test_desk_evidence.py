"""The desk's evidence maps and Prism's heads, as a user sees them: real Qt (offscreen), real demo slides.

The maps drawn here are shaped as the protocol's `explain`, `zero_shot` and `similar` results
(docs/protocol.md): the drawing, the toggles and the clicks are what is checked, with no daemon needed
(the window's daemon line says none answers). The jobs themselves through a real daemon are in
tests/test_desk.py.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt starts: no display on build machines

import numpy as np
import pytest
from PyQt6.QtCore import QPoint, QPointF, Qt, QUrl
from PyQt6.QtGui import QColor, QImage
from pytestqt.qtbot import QtBot

from antoni_bridge import maps
from antoni_bridge.desk.conversations import PRISM, Exchange
from antoni_bridge.desk.prism_panel import ROW_PX
from antoni_bridge.desk.window import DeskWindow
from antoni_bridge.slides.demo import DemoLayout
from antoni_bridge.slides.regions import Region

WAIT_MS = 60_000
TILE = 448  # 224 px at 0.5 um/px on the 0.25 um/px demo slide
HOT = 7  # the tile holding all the evidence


def explain_done(origin: tuple[int, int] = (1200, 1200), columns: int = 6, rows: int = 5) -> dict:
    """An `explain` done as the protocol gives it, with one tile far above the rest."""
    coords = [[origin[0] + (i % columns) * TILE, origin[1] + (i // columns) * TILE] for i in range(columns * rows)]
    values = [0.05 * (i % 3) for i in range(len(coords))]
    values[HOT] = 2.0
    return {"method": "occlusion", "tiles": len(coords), "groups": len(coords) // 2, "tile_size": TILE,
            "coords": coords, "values": values, "group_of": [i // 2 for i in range(len(coords))],
            "log_likelihood": -3.2, "faithfulness": {"deletion_area": 0.2, "random_area": 0.6, "gap": 0.4,
                                                     "random_orders": 8},
            "reliance": {"with_slide": -0.4, "no_image": -2.9, "other_slide": -2.2, "score": 1.8, "flagged": False},
            "refined": [], "provenance": {}, "timings": {"total_s": 1.0}}  # fmt: skip


@pytest.fixture
def window(qtbot: QtBot, tmp_path: Path, demo_40x: tuple[Path, DemoLayout]) -> DeskWindow:
    """A window on the demo slide; no daemon answers (its connection file names none)."""
    made = DeskWindow(tmp_path / "no-daemon.json")
    made.ask_before_closing = False
    qtbot.addWidget(made)
    made.show()
    qtbot.waitExposed(made)
    made.resize(1100, 650)
    made.open_slide(demo_40x[0])
    qtbot.waitUntil(lambda: made.slide is not None, timeout=WAIT_MS)
    return made


def answered(window: DeskWindow, question: str = "Is there DAB staining?", **fields) -> Exchange:
    """An answered exchange in the shown conversation, as the ask job leaves it."""
    exchange = Exchange(question, "Yes, DAB.", state="done", **fields)
    window.conversation().exchanges.append(exchange)
    window.chat.show_conversation(window.conversation())
    return exchange


def pixel_at(window: DeskWindow, x: float, y: float) -> QColor:
    image = window.view.viewport().grab().toImage()
    point = window.view.mapFromScene(QPointF(x, y))
    return image.pixelColor(point)


def test_evidence_toggles_over_the_view_and_overview_with_a_colour_bar(
    qtbot: QtBot, window: DeskWindow, tmp_path: Path
) -> None:
    done = explain_done()
    reliance = {"with_slide": -0.4, "no_image": -0.41, "other_slide": -0.42, "score": 0.01, "flagged": True}
    flagged = answered(window, "Which organ?", reliance=reliance)
    exchange = answered(window, evidence=done, reliance=done["reliance"])
    text = window.chat.transcript.toPlainText()
    assert "Image reliance 1.80" in text and "Show evidence" in text
    assert "Image reliance 0.01; flagged: this answer does not depend on the image" in text, "flagged answers marked"
    hot_x, hot_y = (np.array(done["coords"][HOT]) + TILE / 2).tolist()
    before = pixel_at(window, hot_x, hot_y)

    window.chat.transcript.anchorClicked.emit(QUrl("evidence:1"))  # the link under the second answer
    assert window.view.heat is not None and window.overview.heat is not None
    assert window.chat.evidence_shown is exchange and "Hide evidence" in window.chat.transcript.toPlainText()
    qtbot.wait(50)
    top = maps.colours(np.array(1.0)).astype(int)
    shown = pixel_at(window, hot_x, hot_y)
    distance = {name: np.abs(_rgb(colour) - top).max() for name, colour in (("before", before), ("shown", shown))}
    assert distance["shown"] < distance["before"] - 30, "the hot tile is tinted with the ramp's top colour"
    grab = window.view.viewport().grab().toImage()
    grab.save(str(tmp_path / "view.png"))
    corner = _colours_in(grab, grab.width() - 300, grab.height() - 70, 290, 60)
    assert _near(corner, top) and _near(corner, maps.colours(np.array(0.0))), "the colour bar, bottom right"

    window.chat.transcript.anchorClicked.emit(QUrl("evidence:1"))  # hidden again, nothing asked of a daemon
    assert window.view.heat is None and window.overview.heat is None and window.job is None
    assert "Show evidence" in window.chat.transcript.toPlainText()
    window.chat.transcript.anchorClicked.emit(QUrl("evidence:0"))  # no map yet: the explain job is asked for
    qtbot.waitUntil(lambda: window.job is None, timeout=WAIT_MS)
    assert "daemon" in window.messages.text and flagged.evidence is None and flagged.state == "done"

    window.chat.transcript.anchorClicked.emit(QUrl("evidence:1"))
    window.region_list.setCurrentRow(0)  # the same whole slide: the map stays
    assert window.view.heat is not None
    window.view.drawer.drawn.emit(_box(1500, 1500, 3000, 3000), "Rectangle")  # another region: the map goes
    assert window.view.heat is None and window.chat.evidence_shown is None

    window.region_list.setCurrentRow(0)
    window.export_conversation(tmp_path / "chat.json")
    saved = (tmp_path / "chat.json").read_text(encoding="utf-8")
    assert '"faithfulness"' in saved and '"coords"' not in saved, "figures exported, not the per-tile values"


def test_zero_shot_bars_and_a_label_s_map(qtbot: QtBot, window: DeskWindow) -> None:
    window.tabs.setCurrentIndex(1)  # Prism
    window.prism.labels.setText("tumour")
    window.prism.zero_shot_button.click()
    assert "at least two labels" in window.messages.text and window.job is None
    grid = {k: explain_done()[k] for k in ("tiles", "groups", "tile_size", "coords", "group_of")}
    grid["probabilities"] = [[0.9, 0.05, 0.05] if g == 3 else [0.1, 0.6, 0.3] for g in range(15)]
    done = {"labels": ["DAB", "H&E", "PAS"], "probabilities": [0.7, 0.2, 0.1], "model": "prism", "map": grid}
    window.zero_shot_done, window.prism_conversation = done, window.conversation()
    window.prism.show_zero_shot(done)
    bars = window.prism.bars
    assert [label for label, _ in bars.rows] == ["DAB", "H&E", "PAS"] and bars.height() >= 3 * ROW_PX
    assert "not ANTONI" in window.prism.note.text()
    qtbot.mouseClick(bars, Qt.MouseButton.LeftButton, pos=_row(0))
    assert window.view.heat is not None and window.view.heat.title == "Prism zero-shot: DAB" and bars.marked == "DAB"
    qtbot.mouseClick(bars, Qt.MouseButton.LeftButton, pos=_row(0))
    assert window.view.heat is None and bars.marked == ""


def test_a_prism_draft_is_marked_and_never_sent_as_antoni_s_words(window: DeskWindow, tmp_path: Path) -> None:
    answered(window)
    window.conversation().exchanges.append(Exchange("Draft report", "Diagnosis: DAB.", state="done", speaker=PRISM))
    window.chat.show_conversation(window.conversation())
    text = window.chat.transcript.toPlainText()
    assert "Draft by Prism (not ANTONI): Diagnosis: DAB." in text
    assert text.count("Show evidence") == 1, "evidence is for ANTONI's answers"
    turns = window.conversation().turns_for("next")
    assert [t["content"] for t in turns] == ["Is there DAB staining?", "Yes, DAB.", "next"]
    window.export_conversation(tmp_path / "chat.md")
    assert "**Draft by Prism (not ANTONI):** Diagnosis: DAB." in (tmp_path / "chat.md").read_text(encoding="utf-8")


def test_similar_slides_list_and_a_click_opens_one(
    qtbot: QtBot, window: DeskWindow, demo_20x: Path, tmp_path: Path
) -> None:
    thumbnail = tmp_path / "thumb.png"
    QImage(32, 24, QImage.Format.Format_RGB32).save(str(thumbnail))
    region = {"type": "Polygon", "coordinates": [[[500, 500], [1500, 500], [1500, 1500], [500, 1500], [500, 500]]]}
    done = {"results": [
        {"slide": str(demo_20x), "region": None, "similarity": 0.99, "thumbnail": str(thumbnail), "fingerprint": "a"},
        {"slide": str(demo_20x), "region": region, "similarity": 0.91, "thumbnail": None, "fingerprint": "b"},
    ], "indexed": 12, "timings": {"total_s": 0.01}}  # fmt: skip
    window.prism.show_similar(done)
    listed = [window.prism.similar.item(i).text() for i in range(window.prism.similar.count())]
    assert listed == ["0.990  demo-20x.svs", "0.910  demo-20x.svs (region)"]
    assert "2 closest of 12" in window.prism.note.text()
    assert not window.prism.similar.item(0).icon().isNull() and window.prism.similar.item(1).icon().isNull()
    item = window.prism.similar.item(1)
    window.prism.similar.itemClicked.emit(item)
    qtbot.waitUntil(lambda: window.slide is not None and window.slide.path == demo_20x.resolve(), timeout=WAIT_MS)
    assert window.region is not None and window.region.name.startswith("Similar region")
    assert window.region.bounds == (500, 500, 1500, 1500)


def _box(x0: float, y0: float, x1: float, y1: float) -> Region:
    return Region.rectangle(x0, y0, x1 - x0, y1 - y0)


def _row(index: int) -> QPoint:
    return QPoint(20, index * ROW_PX + ROW_PX // 2)


def _rgb(colour: QColor) -> np.ndarray:
    return np.array([colour.red(), colour.green(), colour.blue()])


def _colours_in(image: QImage, x: int, y: int, width: int, height: int) -> np.ndarray:
    pixels = [image.pixelColor(i, j) for i in range(x, x + width, 2) for j in range(y, y + height, 2)]
    return np.array([[c.red(), c.green(), c.blue()] for c in pixels])


def _near(found: np.ndarray, colour: np.ndarray) -> bool:
    return bool((np.abs(found - colour.astype(int)).max(axis=1) < 12).any())
