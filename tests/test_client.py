"""`Client.run_job`, the one loop over a job's messages every front end uses, against a real
`serve --demo` daemon: streaming, the daemon's refusals as one sentence and a hint, cancel, and the one
busy policy (back-off, then `DaemonBusy`) against a daemon whose queue holds one waiting job."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from antoni_bridge.client import BUSY_STAGE, Cancelled, Client, DaemonBusy
from antoni_bridge.daemon.launch import start_daemon
from antoni_bridge.demo_assets import DEMO_WEIGHTS_VARIABLE, DemoWeights
from antoni_bridge.errors import BridgeError
from antoni_bridge.slides.demo import DemoLayout

LONG = {"max_new_tokens": 8192}  # the demo model's greedy answer runs to the limit: minutes, unless cancelled
WAIT_S = 120.0  # generous: other test processes share the cores; a wait ends as soon as it is met


@contextlib.contextmanager
def demo_daemon(home: Path, *serve_args: str, weights: DemoWeights | None = None) -> Iterator[Path]:
    """A real `serve --demo` in a home of its own (on `weights`, e.g. untrained ones whose answers run to the
    token limit; the shipped demo weights when None); yields its connection file. Clients are given 10 s of
    silence (not the 1 s of conftest's daemon): these tests never leave a job behind, and on loaded build
    machines a short limit cancels live clients' jobs."""
    connection = home / "daemon.json"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ANTONI_BRIDGE_HOME", str(home))
        env.setenv("HF_HUB_OFFLINE", "1")
        if weights is not None:
            env.setenv(DEMO_WEIGHTS_VARIABLE, str(weights.antoni.parent))
        args = ["--demo", "--address", "tcp://127.0.0.1:*", "--client-timeout", "10", *serve_args]
        process = start_daemon(args, connection, home / "start.log")
    try:
        yield connection
    finally:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, untrained_weights: DemoWeights) -> Iterator[Path]:
    """One waiting job at most: a second one waiting is answered `busy`."""
    home = tmp_path_factory.mktemp("client-daemon-home")
    with demo_daemon(home, "--queue", "1", weights=untrained_weights) as connection:
        yield connection


def ask(slide: Path, options: dict[str, Any] | None = None) -> dict[str, Any]:
    content: dict[str, Any] = {"slide": str(slide), "conversation": [{"role": "user", "content": "What organ?"}]}
    if options is not None:
        content["options"] = options
    return content


class Background:
    """A long job run through `run_job` on a thread, cancelled on request; what it ended with is kept."""

    def __init__(self, connection: Path, content: dict[str, Any]) -> None:
        self.accepted = threading.Event()
        self.stop = threading.Event()
        self.outcome: BaseException | dict[str, Any] | None = None
        self.thread = threading.Thread(target=self._run, args=(connection, content), daemon=True)
        self.thread.start()
        assert self.accepted.wait(WAIT_S), "the daemon did not accept the job"

    def _run(self, connection: Path, content: dict[str, Any]) -> None:
        with Client(connection) as client:
            try:
                self.outcome = client.run_job(
                    "ask", content, cancel=self.stop.is_set, on_accepted=lambda _: self.accepted.set()
                )
            except BaseException as exc:
                self.outcome = exc

    def cancel(self) -> BaseException | dict[str, Any] | None:
        self.stop.set()
        self.thread.join(WAIT_S)
        assert not self.thread.is_alive(), "a cancelled job did not end"
        return self.outcome


def running_job(connection: Path) -> dict[str, Any] | None:
    with Client(connection) as client:
        return client.request("status").content["queue"].get("running")


def test_a_job_streams_progress_and_tokens_and_returns_its_done(
    daemon: Path, demo_40x: tuple[Path, DemoLayout]
) -> None:
    stages, tokens, accepted = [], [], []
    with Client(daemon) as client:
        done = client.run_job(
            "ask",
            ask(demo_40x[0], {"max_new_tokens": 6}),
            on_progress=lambda progress: stages.append(progress.stage),
            on_token=tokens.append,
            on_accepted=accepted.append,
        )
    assert accepted[0]["position"] == 0 and accepted[0]["job_id"]
    assert "generating" in stages and stages.index("tile-embedding") < stages.index("generating")
    assert "".join(tokens) == done["answer"] and len(done["token_ids"]) == 6 and done["demo"] is True


def test_a_refusal_is_a_bridge_error_with_the_daemon_s_sentence_and_hint(
    daemon: Path, demo_40x: tuple[Path, DemoLayout], tmp_path: Path
) -> None:
    with Client(daemon) as client:
        with pytest.raises(BridgeError) as missing:
            client.run_job("ask", ask(tmp_path / "nowhere.svs"))
        assert "nowhere.svs" in missing.value.message and missing.value.hint
        with pytest.raises(BridgeError) as bad:
            client.run_job("ask", {"slide": str(demo_40x[0])})  # no conversation: refused at once
        assert "conversation" in bad.value.message and bad.value.hint == "see docs/protocol.md"
        assert not isinstance(bad.value, DaemonBusy)


def test_cancel_ends_the_job_in_the_daemon(daemon: Path, demo_40x: tuple[Path, DemoLayout]) -> None:
    tokens: list[str] = []
    start = time.monotonic()
    with Client(daemon) as client, pytest.raises(Cancelled) as cancelled:
        client.run_job("ask", ask(demo_40x[0], LONG), on_token=tokens.append, cancel=lambda: len(tokens) >= 3)
    assert str(cancelled.value) == "request" and 3 <= len(tokens) < 8192
    assert time.monotonic() - start < WAIT_S
    assert running_job(daemon) is None, "the daemon's worker is free again"
    with Client(daemon) as client, pytest.raises(Cancelled):  # wanted before it was sent: nothing is sent
        client.run_job("ask", ask(demo_40x[0]), cancel=lambda: True)


def test_a_full_queue_is_waited_out_with_back_off_then_given_up(
    daemon: Path, demo_40x: tuple[Path, DemoLayout]
) -> None:
    slide = demo_40x[0]
    first = Background(daemon, ask(slide, LONG))
    deadline = time.monotonic() + WAIT_S
    while running_job(daemon) is None:  # the worker took it: the next one waits in the queue
        assert time.monotonic() < deadline, "the first job never ran"
        time.sleep(0.05)
    second = Background(daemon, ask(slide, LONG))  # the queue's one waiting place

    stages: list[str] = []
    start = time.monotonic()
    with Client(daemon, busy_limit_s=1.0) as client, pytest.raises(DaemonBusy) as busy:
        client.run_job("ask", ask(slide, {"max_new_tokens": 2}), on_progress=lambda p: stages.append(p.stage))
    waited = time.monotonic() - start
    assert stages == [BUSY_STAGE], "one wait of 0.5 s; the next (1 s) would pass the 1 s limit"
    assert 0.5 <= waited < 5.0 and "queue stayed full" in busy.value.message and busy.value.hint

    stages.clear()
    for job in (first, second):  # room in the queue after three back-offs (0.5 s, 1 s, 2 s) at the least
        threading.Timer(4.0, job.stop.set).start()
    times: list[float] = []
    start = time.monotonic()
    with Client(daemon) as client:
        done = client.run_job(
            "ask",
            ask(slide, {"max_new_tokens": 2}),
            on_progress=lambda p: p.stage == BUSY_STAGE and times.append(time.monotonic() - start),
            cancel=lambda: time.monotonic() - start > WAIT_S,
        )
    assert len(done["token_ids"]) == 2
    assert len(times) >= 3, times
    assert times[1] - times[0] >= 0.45 and times[2] - times[1] >= 0.95, f"waits of 0.5 s, then 1 s: {times}"
    for job in (first, second):  # cancelled, or (on a fast machine) at the demo model's context limit first
        outcome = job.cancel()
        assert isinstance(outcome, Cancelled) or (isinstance(outcome, dict) and outcome["stop_reason"] == "length")
