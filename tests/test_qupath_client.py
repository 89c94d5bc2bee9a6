"""The QuPath panel's client core (Groovy, JeroMQ) against a real daemon: Debian's groovy runs
qupath_extension/src/antonibridge/{Protocol,DaemonLink}.groovy with the real JeroMQ jar."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from antoni_bridge.daemon.launch import start_daemon
from tests.qupath_runtime import Driver, require

ASK = {"conversation": [{"role": "user", "content": "What organ is this?"}], "options": {"max_new_tokens": 6}}


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Driver]:
    require()
    driver = Driver(tmp_path_factory.mktemp("java-prefs"))
    yield driver
    driver.close()


@pytest.fixture(scope="module")
def long_latents(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seeded latents whose greedy answer runs to the length limit: seconds of generation."""
    path = tmp_path_factory.mktemp("latents") / "long.pt"
    torch.save(torch.randn(513, 64, generator=torch.Generator().manual_seed(7)), path)
    return path


def test_connects_and_says_demo_weights(driver: Driver, daemon: Path) -> None:
    state = driver.connect(daemon)
    assert state["connected"] and state["demo"] is True and state["server"].startswith("antoni-bridge")
    assert driver.state(lambda s: s["queue"] is not None)["queue"]["running"] is False  # status polled


def test_an_answer_streams_in_and_ends_once(driver: Driver, daemon: Path, tmp_path: Path) -> None:
    latents = tmp_path / "latents.pt"
    torch.save(torch.randn(513, 64, generator=torch.Generator().manual_seed(0)), latents)  # a non-empty answer
    driver.connect(daemon)
    driver.send("ask", content={**ASK, "features": str(latents)})
    events = driver.job_until_end()
    types = [e["type"] for e in events]
    assert types[0] == "accepted" and types[-1] == "done" and "token" in types
    done = events[-1]["content"]
    assert "".join(e["content"]["text"] for e in events if e["type"] == "token") == done["answer"]
    assert done["demo"] is True


def test_cancel_ends_a_long_answer_at_once(driver: Driver, daemon: Path, long_latents: Path) -> None:
    driver.connect(daemon)
    driver.send("ask", content={**ASK, "features": str(long_latents), "options": {"max_new_tokens": 1500}})
    driver.wait_for(lambda r: r["kind"] == "job" and r["data"]["type"] == "token")
    start = time.monotonic()
    driver.send("cancel")
    assert driver.job_until_end()[-1]["type"] == "cancelled"
    assert time.monotonic() - start < 2.0


def test_a_slide_the_daemon_cannot_read_is_a_clear_error(driver: Driver, daemon: Path, tmp_path: Path) -> None:
    driver.connect(daemon)
    driver.send("ask", content={**ASK, "slide": str(tmp_path / "nowhere.svs")})
    last = driver.job_until_end()[-1]
    assert last["type"] == "error" and "No slide at" in last["content"]["message"] and last["content"]["hint"]


def test_no_daemon_names_the_cause_and_the_fix(driver: Driver, tmp_path: Path) -> None:
    state = driver.connect(tmp_path / "daemon.json")
    assert not state["connected"]
    assert state["problem"]["message"].startswith("The daemon is not running")
    assert state["problem"]["hint"] == "start it with `antoni-bridge serve`"
    driver.send("ask", content={**ASK, "features": "x.pt"})
    assert driver.job_until_end()[-1]["content"]["hint"] == "start it with `antoni-bridge serve`"


def test_a_wrong_key_is_a_key_mismatch(driver: Driver, daemon: Path, tmp_path: Path) -> None:
    wrong = json.loads(daemon.read_text())
    wrong["key"] = "0" * 64
    (tmp_path / "daemon.json").write_text(json.dumps(wrong))
    state = driver.connect(tmp_path / "daemon.json")
    assert not state["connected"] and state["problem"]["message"].startswith("Key mismatch")
    assert "the daemon restarted" in state["problem"]["hint"]


def test_another_protocol_version_is_named(driver: Driver, daemon: Path, tmp_path: Path) -> None:
    newer = {**json.loads(daemon.read_text()), "protocol": 2}
    (tmp_path / "daemon.json").write_text(json.dumps(newer))
    state = driver.connect(tmp_path / "daemon.json")
    assert state["problem"]["message"] == "The daemon speaks protocol 2, this panel 1."


def test_a_daemon_that_dies_or_restarts_is_noticed_and_reconnected(
    driver: Driver, tmp_path: Path, long_latents: Path
) -> None:
    connection, log = tmp_path / "daemon.json", tmp_path / "daemon.log"
    serve = ("--demo", "--address", "tcp://127.0.0.1:*")
    daemons = [start_daemon(serve, connection_file=connection, log_file=log)]
    try:
        assert driver.connect(connection)["connected"]
        driver.send("ask", content={**ASK, "features": str(long_latents), "options": {"max_new_tokens": 1700}})
        driver.wait_for(lambda r: r["kind"] == "job" and r["data"]["type"] == "token")
        daemons[0].kill()
        daemons[0].wait()  # reaped, as a daemon started from a shell is
        start = time.monotonic()
        last = driver.job_until_end()[-1]
        assert last["type"] == "error" and "stopped" in last["content"]["message"]
        assert time.monotonic() - start < 3
        daemons.append(start_daemon(serve, connection_file=connection, log_file=log))
        assert driver.state(lambda s: s["connected"])["address"] == json.loads(connection.read_text())["address"]
        # A restart between two polls: the new daemon's file replaces the old one's as the old one ends (a
        # second daemon may not take over a live daemon's connection file itself).
        daemons.append(start_daemon(serve, connection_file=tmp_path / "next.json", log_file=log))
        daemons[1].kill()
        daemons[1].wait()
        os.replace(tmp_path / "next.json", connection)
        notice = driver.state(lambda s: s["notice"] is not None)["notice"]
        assert notice == "The daemon restarted; connecting to the new one."
        assert driver.state(lambda s: s["connected"])["address"] == json.loads(connection.read_text())["address"]
    finally:
        for process in daemons:
            process.kill()
            process.wait()


def test_a_long_answer_is_not_taken_for_a_dead_client(driver: Driver, tmp_path: Path, long_latents: Path) -> None:
    """A daemon that cancels the jobs of clients silent for 0.8 s: only the link's heartbeats keep this one going
    (its status requests come once a second)."""
    connection = tmp_path / "daemon.json"
    strict = ("--demo", "--address", "tcp://127.0.0.1:*", "--client-timeout", "0.8")
    process = start_daemon(strict, connection_file=connection, log_file=tmp_path / "daemon.log")
    try:
        driver.connect(connection)
        start = time.monotonic()
        driver.send("ask", content={**ASK, "features": str(long_latents), "options": {"max_new_tokens": 1700}})
        last = driver.job_until_end()[-1]
        assert last["type"] == "done" and last["content"]["stop_reason"] == "length"
        assert time.monotonic() - start > 1.0
    finally:
        process.kill()
        process.wait()


def test_close_ends_the_link_thread(driver: Driver, daemon: Path) -> None:
    driver.connect(daemon)
    driver.send("close")
    assert driver.wait_for(lambda r: r["kind"] == "closed", timeout=10)["data"]["threads"] == 0
