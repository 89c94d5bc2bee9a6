"""The chat panel (JavaFX, Debian's OpenJFX under Xvfb) as a user drives it, against a real daemon, inside the
QuPath double's main window (QuPath's layout: menus, the analysis pane with the panel's tab, the viewer):
tests/groovy/panel_check.groovy asks about an annotation of a demo slide, follows up, takes a screenshot of the
window (1280x800) and cancels a whole-slide question while its tiles are embedded.

The screenshot goes to a temporary folder; scripts/qupath-screenshot (ANTONI_BRIDGE_SCREENSHOT=docs/qupath-panel.png)
refreshes the one the docs show.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from antoni_bridge.demo_assets import DEMO_NOTE, DEMO_WEIGHTS_VARIABLE, DemoWeights
from antoni_bridge.slides.demo import DemoLayout
from antoni_bridge.slides.reader import Slide
from tests.conftest import serve_demo
from tests.qupath_runtime import require, run

SCREENSHOT = os.environ.get("ANTONI_BRIDGE_SCREENSHOT")  # where scripts/qupath-screenshot wants the picture


@pytest.fixture(scope="module")
def screenshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(SCREENSHOT).resolve() if SCREENSHOT else tmp_path_factory.mktemp("screenshot") / "qupath-panel.png"


@pytest.fixture(scope="module")
def evidence_screenshot(screenshot: Path) -> Path:
    """The second picture, with an answer's evidence map over the slide, beside the first."""
    return screenshot.with_name("qupath-evidence.png")


@pytest.fixture(scope="module")
def panel_daemon(tmp_path_factory: pytest.TempPathFactory, untrained_weights: DemoWeights) -> Iterator[Path]:
    """Untrained demo weights (an answer long enough to watch it stream) and batches of 8 tiles (so a cancel
    lands while the test slide's 51 tiles are embedded). For the docs' picture (scripts/qupath-screenshot) the
    shipped, trained demo weights, whose answers to the demo task's questions make sense. No client is killed
    here, so the daemon waits 5 s (not the fixture's 1 s) for heartbeats before it cancels a job: a JVM starved
    on a loaded 2-core build machine sends them late."""
    untrained = {DEMO_WEIGHTS_VARIABLE: str(untrained_weights.antoni.parent)}
    env = {} if SCREENSHOT else untrained
    yield from serve_demo(tmp_path_factory, env, "--batch-size", "8", "--client-timeout", "5")


@pytest.fixture(scope="module")
def seen(
    tmp_path_factory: pytest.TempPathFactory,
    panel_daemon: Path,
    demo_40x: tuple[Path, DemoLayout],
    demo_odd_pyramid: Path,
    screenshot: Path,
    evidence_screenshot: Path,
) -> dict[str, Any]:
    require(gui=True)
    prefs = tmp_path_factory.mktemp("java-prefs")
    thumbnail, downsample = _thumbnail(demo_40x[0], prefs / "thumbnail.png")
    args = (str(demo_40x[0]), str(demo_odd_pyramid), str(screenshot), str(thumbnail), str(downsample))
    args = (*args, str(evidence_screenshot))
    connection = str(panel_daemon)  # 600 s: at load 14 on 2 cores the script took over 300
    return run(
        "panel_check.groovy", *args, prefs=prefs, gui=True, timeout=600, ANTONI_BRIDGE_CONNECTION_FILE=connection
    )


def _thumbnail(slide: Path, png: Path) -> tuple[Path, float]:
    """The slide's smallest level as a PNG, for the double's viewer (which draws no slides), and its downsample."""
    with Slide(slide) as opened:
        level = opened.level_count - 1
        Image.fromarray(opened.read_level(level)).save(png)
        return png, opened.level_downsamples[level]


def test_the_status_line_says_connected_and_demo_weights(seen: dict[str, Any]) -> None:
    assert seen["status"].startswith("Connected to antoni-bridge")
    assert "demo weights (a synthetic task only, no pathology)" in seen["status"] and seen["status"].endswith("idle")


def test_progress_shows_each_stage_and_tiles_per_second(seen: dict[str, Any]) -> None:
    progress = seen["first"]["progress"]
    stages = ["Loading the models", "Finding tissue", "Encoding the slide", "Writing the answer"]
    assert [p for p in progress if p in stages] == stages
    assert any(re.fullmatch(r"Embedding tiles: \d+ of \d+ tiles · [\d.]+ tiles/s", p) for p in progress), progress


def test_the_answer_streams_into_the_conversation(seen: dict[str, Any]) -> None:
    first = seen["first"]
    assert first["transcriptChanges"] > 10, ("the answer arrived in one piece, not streamed", first["transcript"])
    assert 'About annotation "Tumour" in demo-40x.svs\n\nYou: Which stain is this?\nANTONI: ' in first["transcript"]
    assert DEMO_NOTE in first["transcript"] and first["message"] == ""


def test_a_follow_up_continues_the_conversation_from_the_cache(seen: dict[str, Any]) -> None:
    follow_up = seen["followUp"]
    assert not any(p.startswith("Embedding tiles") for p in follow_up["progress"])  # latents from the cache
    assert follow_up["transcript"].count("You: ") == 2 and follow_up["transcript"].count(DEMO_NOTE) == 2
    saved = json.loads(seen["annotation"]["metadata"]["ANTONI conversation"])
    assert [t["role"] for t in saved] == ["user", "assistant", "user", "assistant"]
    assert seen["annotation"]["metadata"]["ANTONI question 2"] == "Is there DAB (brown) staining?"
    metadata = seen["annotation"]["metadata"]
    provenance = json.loads(metadata["ANTONI provenance 2"])
    assert provenance["weights"] and provenance["adapter"] is True  # the daemon names its weights
    assert provenance["demo"] is True and provenance["front_end"] == "qupath"
    assert provenance["options_set"] == {"max_new_tokens": 48}  # only what the user set in the panel
    assert "You: Is there DAB (brown) staining?" in seen["annotation"]["description"]


def test_the_self_test_passes_and_leaves_nothing_in_the_image(seen: dict[str, Any]) -> None:
    self_test = seen["selfTest"]
    report = self_test["report"]
    assert report.startswith("ANTONI self-test: QuPath 0.6.0 (test double), Java ")
    assert "user directory: QuPath 0.7: not set; QuPath 0.6: not set" in report
    for check in (
        "JeroMQ on the class path",
        "the ANTONI tab",
        "menu commands and shortcut",
        "Alt+right-click menu",
        "the open image",
        "the selected annotation",
        "writing and removing a description",
        "where whole-image answers are saved",
        "evidence tiles (one made, not added)",
        "similar slides: the project images",
        "the daemon",
    ):
        assert f"ok   {check}" in report, report
    assert report.endswith("all checks passed")
    assert self_test["unchanged"] is True and self_test["changeEvents"] == 0


def test_scripts_ask_through_the_groovy_api_and_wait_for_the_answer(seen: dict[str, Any]) -> None:
    assert isinstance(seen["api"]["answer"], str)
    assert seen["api"]["onUiThread"].startswith(
        "AntoniBridge.ask waits for the daemon, so it cannot run on QuPath's UI"
    )


def test_copy_conversation_puts_it_on_the_clipboard(seen: dict[str, Any]) -> None:
    assert seen["copied"] == {"same": True, "message": "The conversation is on the clipboard."}


def test_cancel_during_embedding_stops_at_once_and_keeps_the_question(seen: dict[str, Any]) -> None:
    assert seen["embedding"]["text"].startswith("Embedding tiles")
    assert seen["cancelSeconds"] < 5.0  # at once: not after the slide is embedded (2 s on a quiet machine)
    # The daemon sees a cancel between batches of tiles (8 here; encoders/pipeline.py embed_tiles, its progress
    # callback), so a cancel waits for the batch in flight: measured 4.25 s for a 3.6 s batch at load 11 on
    # 2 cores. Beyond one batch, stopping the tile reader and the reply take well under 1.5 s.
    assert seen["batchSeconds"], "no whole batch was timed before the cancel"
    assert seen["cancelSeconds"] < max(seen["batchSeconds"]) + 1.5, (seen["cancelSeconds"], seen["batchSeconds"])
    cancelled = seen["cancelled"]
    assert cancelled["message"] == "Cancelled; the question is back in the box."
    assert cancelled["question"] == "Describe this slide." and "You:" not in cancelled["transcript"]


def test_a_screenshot_of_the_panel_is_written(seen: dict[str, Any], screenshot: Path) -> None:
    with Image.open(screenshot) as image:
        assert image.size == (1280, 800)  # QuPath's main window with the panel docked, not the panel alone
        assert len(image.convert("RGB").getcolors(1 << 16) or []) > 20  # a drawn panel, not a blank window


def test_every_answer_shows_how_much_it_relies_on_the_slide(seen: dict[str, Any]) -> None:
    rows = seen["evidence"]["rows"]
    assert [row.split(":")[0] for row in rows] == ["Answer 1", "Answer 2"]
    assert all("Reliance on the slide: " in row or "FLAGGED: this answer does not depend" in row for row in rows)
    reliance = json.loads(seen["evidence"]["saved"]["ANTONI reliance 2"])  # saved with the answer
    assert set(reliance) >= {"with_slide", "no_image", "other_slide", "score", "flagged"}


def test_show_evidence_draws_the_daemons_map_as_tiles_and_saves_it_with_the_answer(seen: dict[str, Any]) -> None:
    evidence = seen["evidence"]
    assert "Leaving out each group" in " ".join(evidence["progress"])  # the explain job's own stages
    assert evidence["tiles"] > 1 and len(set(evidence["values"])) > 1 and len(set(evidence["colours"])) > 1
    for x0, y0, x1, y1 in evidence["bounds"]:  # tiles of the region asked about (1500-4000), of the daemon's size
        assert x1 - x0 == y1 - y0 and x1 > 1500 and y1 > 1500 and x0 < 4000 and y0 < 4000
    assert evidence["message"].startswith(f'Evidence: {evidence["tiles"]} tiles in the class "ANTONI evidence"')
    assert "faithfulness: deletion" in evidence["message"]
    saved = json.loads(evidence["saved"]["ANTONI evidence 2"])  # beside ANTONI answer 2, the answer explained
    assert saved["values"] == pytest.approx(evidence["values"], abs=1e-6) and saved["method"] == "occlusion"
    assert seen["removed"] == {"message": f"Removed {evidence['tiles']} evidence tiles from the image.", "left": 0}


def test_a_screenshot_of_the_evidence_map_is_written(seen: dict[str, Any], evidence_screenshot: Path) -> None:
    with Image.open(evidence_screenshot) as image:
        assert image.size == (1280, 800)


def test_similar_slides_find_the_region_asked_about_and_open_its_slide_on_a_click(
    seen: dict[str, Any], demo_40x: tuple[Path, DemoLayout]
) -> None:
    links = seen["similar"]["links"]
    # the annotation asked about above is the closest to a smaller one inside it; no project is open
    assert links and links[0].endswith(f"{demo_40x[0].name} (file, a region of it)"), seen["similar"]
    assert seen["similarOpened"] == {"calls": [f"openImage {demo_40x[0]}"], "file": str(demo_40x[0])}


def test_prisms_zero_shot_labels_come_as_bars(seen: dict[str, Any]) -> None:
    zero_shot = seen["zeroShot"]
    assert sorted(zero_shot["rows"]) == ["blue haematoxylin only", "brown DAB staining"]
    assert (
        sum(zero_shot["bars"]) == pytest.approx(1.0, abs=1e-6) and zero_shot["bars"] == sorted(zero_shot["bars"])[::-1]
    )
    assert "by Prism (prism), not by ANTONI" in zero_shot["message"]


def test_prisms_report_draft_streams_into_the_conversation_marked_as_prisms(seen: dict[str, Any]) -> None:
    report = seen["report"]
    draft = report["saved"][-1]
    assert draft["role"] == "prism" and draft["content"].startswith("Diagnosis:")
    assert draft["label"] == "Draft by Prism (not ANTONI)" and draft["provenance"]["model"] == "prism"
    prism = "Prism (draft report by another model, not ANTONI)"
    assert f"{prism}: {draft['content'].strip()}\n  (Draft by Prism (not ANTONI), " in report["transcript"]
    assert report["changes"] >= 4, report  # shown, the marker, token events (one at least), the saved draft
