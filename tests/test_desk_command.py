"""The `desk` command's own checks, and the conversation record, without a window."""

from __future__ import annotations

import json
from pathlib import Path

from antoni_bridge.desk.conversations import Conversation, Exchange, export
from antoni_bridge.slides.regions import Region
from tests.conftest import run_cli


def test_without_pyqt6_the_desk_says_which_extra_to_install(tmp_path: Path) -> None:
    fake = tmp_path / "PyQt6"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('PyQt6 is missing here on purpose')\n")
    result = run_cli("desk", env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "needs PyQt6" in result.stderr and "pip install 'antoni-bridge[desk]'" in result.stderr
    assert run_cli("tiles", "--help", env={"PYTHONPATH": str(tmp_path)}).returncode == 0, "other commands work"


def test_annotations_without_a_slide_are_refused() -> None:
    result = run_cli("desk", "--geojson", "annotations.geojson")
    assert result.returncode == 2 and "no slide was given" in result.stderr


def test_only_answered_exchanges_are_context_and_exports_replace_files_whole(tmp_path: Path) -> None:
    conversation = Conversation(Path("/slides/a.svs"), Region.rectangle(0, 0, 10, 10))
    conversation.exchanges += [
        Exchange("first?", "partial", state="cancelled"),
        Exchange("second?", "an answer", state="done", demo=True),
        Exchange("third?", "", state="error", note="No tissue in the region."),
    ]
    assert conversation.turns_for("fourth?") == [
        {"role": "user", "content": "second?"},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": "fourth?"},
    ]
    markdown, data = tmp_path / "chat.md", tmp_path / "chat.json"
    markdown.write_text("an older export")
    export(conversation, markdown)
    export(conversation, data)
    text = markdown.read_text()
    assert "## Q" in text and "*cancelled*" in text and "demo weights" in text and "No tissue" in text
    assert [e["state"] for e in json.loads(data.read_text())["exchanges"]] == ["cancelled", "done", "error"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chat.json", "chat.md"], "no temporary file is left"
