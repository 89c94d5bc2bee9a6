"""Every front end asks the same question of the same demo slide with the same defaults and gets the same
answer, token for token: the CLI (`ask --json`), a batch, the desk's window (real Qt, offscreen) and the
Python client, all through one real `serve --demo` daemon. None of them sends decoding options, so the
daemon's one set of defaults (greedy, 1024 tokens) decides every answer."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt starts: no display on build machines

import pytest
from pytestqt.qtbot import QtBot

from antoni_bridge.client import Client
from antoni_bridge.desk.window import DeskWindow
from antoni_bridge.slides.demo import DemoLayout
from tests.conftest import run_cli
from tests.test_client import demo_daemon

QUESTION = "What organ is this tissue from?"
WAIT_MS = 300_000  # 1024 demo tokens on shared build-machine cores


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with demo_daemon(tmp_path_factory.mktemp("agree-daemon-home")) as connection:
        yield connection


def through_the_cli(daemon: Path, slide: Path) -> dict[str, Any]:
    env = {"ANTONI_BRIDGE_CONNECTION_FILE": str(daemon)}
    result = run_cli("ask", str(slide), QUESTION, "--json", env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def through_a_batch(daemon: Path, slide: Path, out: Path) -> dict[str, Any]:
    env = {"ANTONI_BRIDGE_CONNECTION_FILE": str(daemon)}
    result = run_cli("batch", str(slide), "--question", QUESTION, "--annotations", "none", "--out", str(out), env=env)
    assert result.returncode == 0, result.stderr
    (record,) = json.loads(out.with_suffix(".json").read_text())["results"]
    assert record["status"] == "done", record
    return record


def through_the_desk(qtbot: QtBot, daemon: Path, slide: Path) -> dict[str, Any]:
    window = DeskWindow(daemon)
    window.ask_before_closing = False
    qtbot.addWidget(window)
    window.open_slide(slide)
    qtbot.waitUntil(lambda: window.slide is not None, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: window.daemon_state.running, timeout=WAIT_MS)  # its hello is known
    assert window.chat.options_set() == {}, "the desk sends no option the user did not set"
    window.ask(QUESTION)
    done: list[dict[str, Any]] = []
    window.job.event.connect(lambda kind, content: kind == "done" and done.append(content))
    qtbot.waitUntil(lambda: window.job is None, timeout=WAIT_MS)
    assert done, window.messages.text
    exchange = window.conversation().exchanges[-1]
    assert exchange.provenance["front_end"] == "desk" and exchange.provenance["options_set"] == {}
    return done[0]


def through_the_python_client(daemon: Path, slide: Path) -> dict[str, Any]:
    content = {"slide": str(slide.resolve()), "conversation": [{"role": "user", "content": QUESTION}]}
    with Client(daemon) as client:
        return client.run_job("ask", content)


def test_every_front_end_gives_the_same_answer_with_the_same_defaults(
    qtbot: QtBot, daemon: Path, demo_40x: tuple[Path, DemoLayout], tmp_path: Path
) -> None:
    slide = demo_40x[0]
    answers = {
        "python": through_the_python_client(daemon, slide),
        "cli": through_the_cli(daemon, slide),
        "batch": through_a_batch(daemon, slide, tmp_path / "answers.csv"),
        "desk": through_the_desk(qtbot, daemon, slide),
    }
    tokens = {name: answer["token_ids"] for name, answer in answers.items()}
    assert len(tokens["python"]) > 0
    assert all(ids == tokens["python"] for ids in tokens.values()), {k: len(v) for k, v in tokens.items()}
    assert len({answer["answer"] for answer in answers.values()}) == 1
    assert answers["batch"]["provenance"]["front_end"] == "batch"
    assert answers["batch"]["provenance"]["options_set"] == {}
    decodings = [
        answer["provenance"]["decoding"] for answer in answers.values() if "decoding" in answer.get("provenance", {})
    ]
    assert all(decoding == decodings[0] for decoding in decodings), "one set of defaults"
