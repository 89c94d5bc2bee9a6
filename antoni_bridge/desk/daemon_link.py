"""Talking to the daemon without blocking the UI: each conversation with it runs on its own thread.

The client heartbeats while a job runs, and a ZeroMQ socket belongs to one thread, so each job (an ask,
an explain, a zero-shot, a report draft, a similar-slides search) runs
`Client.run_job` (the one loop every front end uses) on a worker thread; a cancel is a flag that loop
polls. Results reach the UI as Qt signals, which Qt queues onto the UI thread.
"""

from __future__ import annotations

import logging
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PyQt6.QtCore import QObject, pyqtSignal

from antoni_bridge.client import Cancelled, Client, provenance_in_hello
from antoni_bridge.daemon.launch import start_daemon
from antoni_bridge.errors import BridgeError

log = logging.getLogger("antoni_bridge.desk")
POLL_S = 1.0
REQUEST_TIMEOUT_S = 2.0


def _guarded(work: Callable[[], None], failed: Callable[[str, str], None]) -> None:
    """Run `work`, turning any failure into one sentence and a hint for the window."""
    try:
        work()
    except BridgeError as exc:
        failed(exc.message, exc.hint)
    except Exception as exc:  # a bug must reach the window as a message, not end the app
        log.exception("daemon link failed")
        failed(f"Unexpected error talking to the daemon ({type(exc).__name__}: {exc}).", "see the terminal's log")


class DaemonJob(QObject):
    """One job (`kind`: ask, explain, zero_shot, report, similar) and its events, from `accepted` to
    exactly one terminal message (or a failure).

    `event` carries what `run_job` reports, as the protocol names it: accepted, progress (stage, done,
    total, rate; the stage says when a full queue is waited out), token (text), then done or cancelled.
    A refusal, an unreachable daemon or a queue full for too long is `failed` instead."""

    event = pyqtSignal(str, object)  # type, content
    failed = pyqtSignal(str, str)  # message, hint: the daemon could not be reached or answered
    ended = pyqtSignal()

    def __init__(self, connection_file: Path, kind: str, content: dict[str, Any]) -> None:
        super().__init__()
        self.connection_file, self.kind, self.content = connection_file, kind, content
        self.job_id: str | None = None
        self._cancel_wanted = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"desk-{kind}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def cancel(self) -> None:
        """Ask the daemon to cancel: sent as soon as the job has an id (at once when it has one)."""
        self._cancel_wanted.set()

    def wait(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)

    def _run(self) -> None:
        _guarded(self._run_job, self.failed.emit)
        self.ended.emit()

    def _run_job(self) -> None:
        with Client(self.connection_file) as client:
            try:
                done = client.run_job(
                    self.kind,
                    self.content,
                    on_accepted=self._accepted,
                    on_progress=lambda progress: self.event.emit("progress", asdict(progress)),
                    on_token=lambda text: self.event.emit("token", {"text": text}),
                    cancel=self._cancel_wanted.is_set,
                )
            except Cancelled as exc:
                self.event.emit("cancelled", {"reason": str(exc)})
                return
        self.event.emit("done", done)

    def _accepted(self, content: dict[str, Any]) -> None:
        self.job_id = content["job_id"]
        self.event.emit("accepted", content)


@dataclass(frozen=True)
class DaemonState:
    """What the window shows about the daemon: whether it answers, its weights and its queue."""

    running: bool
    demo: bool = False
    address: str = ""
    queue: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    hint: str = ""
    decoding: dict[str, Any] = field(default_factory=dict)  # the daemon's defaults ({} when it does not say)
    provenance: dict[str, Any] = field(default_factory=dict)  # of the engine answering, as `hello` tells it

    def jobs_ahead(self, job_id: str | None) -> int | None:
        """How many jobs run or wait before this one (0: it runs or runs next), as `accepted` counts;
        None when the daemon does not list it."""
        running = self.queue.get("running")
        if running and running.get("job_id") == job_id:
            return 0
        waiting = [job.get("job_id") for job in self.queue.get("waiting", [])]
        if job_id not in waiting:
            return None
        return waiting.index(job_id) + (running is not None)


class DaemonMonitor(QObject):
    """Polls `hello` and `status` once a second on its own thread, reconnecting after a restart."""

    changed = pyqtSignal(object)  # DaemonState

    def __init__(self, connection_file: Path, interval_s: float = POLL_S) -> None:
        super().__init__()
        self.connection_file, self.interval_s = connection_file, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="desk-monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(REQUEST_TIMEOUT_S + 1)

    def _run(self) -> None:
        client: Client | None = None
        hello: dict[str, Any] = {}
        while True:
            try:
                if client is None:
                    client = Client(self.connection_file, timeout_s=REQUEST_TIMEOUT_S)
                    hello = client.request("hello").content
                status = client.request("status").content
                state = DaemonState(
                    True,
                    bool(hello.get("demo")),
                    client.info.address,
                    status.get("queue", {}),
                    decoding=hello.get("decoding", {}),
                    provenance=provenance_in_hello(hello),
                )
            except BridgeError as exc:
                if client is not None:
                    client.close()
                    client = None
                state = DaemonState(False, message=exc.message, hint=exc.hint)
            self.changed.emit(state)
            if self._stop.wait(self.interval_s):
                break
        if client is not None:
            client.close()


class DaemonStarter(QObject):
    """`start_daemon` on a thread, unless a daemon already answers: starting takes seconds (the first start
    with demo weights also builds them)."""

    started = pyqtSignal(object)  # the new daemon's subprocess.Popen, or None when one was already running
    failed = pyqtSignal(str, str)

    def __init__(self, serve_args: Sequence[str], connection_file: Path) -> None:
        super().__init__()
        self.serve_args, self.connection_file = tuple(serve_args), connection_file

    def start(self) -> None:
        def work() -> None:
            running = daemon_answers(self.connection_file)
            self.started.emit(None if running else start_daemon(self.serve_args, self.connection_file))

        threading.Thread(target=_guarded, args=(work, self.failed.emit), name="desk-start-daemon", daemon=True).start()


def daemon_answers(connection_file: Path) -> bool:
    """Whether a daemon answers `hello` now (a stale connection file of a dead daemon does not)."""
    try:
        with Client(connection_file, timeout_s=REQUEST_TIMEOUT_S) as client:
            client.request("hello")
        return True
    except BridgeError:
        return False


def stop_daemon(connection_file: Path, process: subprocess.Popen[bytes]) -> None:
    """Shut down a daemon this app started, killing it if it does not go within seconds."""
    try:
        with Client(connection_file, timeout_s=REQUEST_TIMEOUT_S) as client:
            client.request("shutdown")
        process.wait(10)
    except (BridgeError, subprocess.TimeoutExpired):
        process.kill()
        process.wait()
