"""The Python client of the daemon: reads the connection file, sends signed requests, iterates events.

Front ends never touch tensors: they send "this slide or region + this conversation" and read back
progress, tokens and exactly one terminal message per job.

Liveness: while waiting, the client heartbeats; the daemon answers every heartbeat, so silence means
the daemon is gone (a local daemon's process is also checked directly, which notices a crash at once).
A daemon restarted since the last request has a new key: the client reads the connection file before
each request and reconnects. Idempotent requests (`hello`, `status`) are retried on a fresh socket
when the daemon does not answer (the Lazy Pirate pattern).

`run_job` is the one loop over a job's messages that every front end (CLI, batch, desk) uses, with the
one policy for a full queue: `busy` is retried after 0.5 s, doubling to 8 s, for at most 300 s.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import zmq

from antoni_bridge import paths
from antoni_bridge.daemon.protocol import ConnectionInfo, Message, ProtocolError, Session, is_loopback
from antoni_bridge.engine import Cancelled
from antoni_bridge.errors import BridgeError

TERMINAL = ("done", "error", "cancelled", "busy")
DEAD_AFTER_S = 5.0  # no message at all (heartbeat replies included) for this long: the daemon is gone
HEARTBEAT_S = 0.25  # while waiting for an answer; the daemon cancels the jobs of silent clients
BUSY_FIRST_WAIT_S, BUSY_LONGEST_WAIT_S = 0.5, 8.0  # a full queue: wait, doubling, then send the job again
BUSY_LIMIT_S = 300.0  # then give up: the daemon is taken by other front ends
BUSY_STAGE = "waiting: the daemon's queue is full"  # the progress stage reported while waiting
IDEMPOTENT = ("hello", "status")
RETRIES = 3
RETRY_WAIT_S = 0.5
NOT_RUNNING_HINT = "start it with `antoni-bridge serve`"
CHECK_REPLIES = "ANTONI_BRIDGE_CHECK_REPLIES"  # "1": every reply is checked against the schema (the tests set it)


class DaemonUnreachable(BridgeError):
    """The daemon did not answer, stopped, or restarted with another key: worth a retry when idempotent."""


class DaemonBusy(BridgeError):
    """The daemon's queue stayed full for the whole busy limit."""


class Client:
    def __init__(
        self, connection_file: Path | None = None, timeout_s: float = DEAD_AFTER_S, busy_limit_s: float = BUSY_LIMIT_S
    ) -> None:
        self.connection_file = connection_file or paths.connection_file()
        self.timeout_s, self.busy_limit_s = timeout_s, busy_limit_s
        self.context = zmq.Context()
        self.socket: zmq.Socket | None = None
        self._connect(ConnectionInfo.read_running(self.connection_file))

    def _connect(self, info: ConnectionInfo) -> None:
        """A fresh socket to the daemon `info` describes (anything queued on the old one is dropped)."""
        if self.socket is not None:
            self.socket.close()
        self.info, self.session = info, Session(info.key_bytes)
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.linger = 0
        self.socket.sndtimeo = int(self.timeout_s * 1000)  # with no daemon taking messages, send would block for ever
        if info.curve_server_key:
            public, secret = zmq.curve_keypair()
            self.socket.curve_publickey, self.socket.curve_secretkey = public, secret
            self.socket.curve_serverkey = info.curve_server_key.encode("ascii")
        self.socket.connect(info.address)
        self.last_sent = self.last_heard = time.monotonic()

    def _refresh(self) -> None:
        """Reconnect when the daemon restarted since the last request (new key or address)."""
        try:
            info = ConnectionInfo.read_running(self.connection_file)
        except BridgeError as exc:  # stopped, or restarting: a retry may find it
            raise DaemonUnreachable(exc.message, exc.hint) from None
        if (info.key, info.address) != (self.info.key, self.info.address):
            self._connect(info)

    def close(self) -> None:
        self.socket.close()
        self.context.term()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, type_: str, content: dict[str, Any]) -> Message:
        message = self.session.message(type_, content)
        try:
            self.socket.send_multipart(self.session.frames(message))
        except zmq.Again:
            raise DaemonUnreachable(
                f"The daemon at {self.info.address} takes no messages (none for {self.timeout_s:.0f} s).",
                NOT_RUNNING_HINT,
            ) from None
        self.last_sent = time.monotonic()
        return message

    def request(self, type_: str, content: dict[str, Any] | None = None) -> Message:
        """One request, one reply (hello, status, cancel, shutdown); idempotent ones are retried."""
        attempts = RETRIES if type_ in IDEMPOTENT else 1
        for attempt in range(attempts):
            try:
                self._refresh()
                reply = self._answer_to(self.send(type_, content or {}), self.timeout_s)
                break
            except DaemonUnreachable:
                if attempt == attempts - 1:
                    raise
                time.sleep(RETRY_WAIT_S)
                self._connect(self.info)
        if reply.type == "error":
            raise BridgeError(
                reply.content.get("message", "The daemon refused the request."), reply.content.get("hint", "")
            )
        return reply

    def run_job(
        self,
        type_: str,
        content: dict[str, Any],
        *,
        on_progress: Callable[[Any], None] | None = None,
        on_token: Callable[[str], None] | None = None,
        cancel: Callable[[], bool] | None = None,
        on_accepted: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """One job from request to its terminal message: the content of its `done`.

        `on_progress` gets a `slides.planning.Progress` per progress event (and `BUSY_STAGE` while a full
        queue is waited out), `on_token` each streamed piece of text, `on_accepted` the `accepted` content
        (job id, queue position). `cancel` is polled while waiting: once true, the job is cancelled in the
        daemon. Raises `BridgeError` with the daemon's sentence and hint on `error`, `Cancelled` on
        `cancelled`, `DaemonBusy` when the queue stays full for `busy_limit_s`.
        """
        wanted = cancel or (lambda: False)
        report = _progress_reporter(on_progress)
        waited, wait = 0.0, BUSY_FIRST_WAIT_S
        while True:
            if wanted():
                raise Cancelled("before the job was sent")
            terminal = self._one_attempt(type_, content, report, on_token, wanted, on_accepted)
            if terminal.type == "done":
                return terminal.content
            if terminal.type == "cancelled":
                raise Cancelled(terminal.content.get("reason", "request"))
            if terminal.type == "error":
                message = terminal.content.get("message", "The daemon refused the job.")
                raise BridgeError(message, terminal.content.get("hint", ""))
            if waited + wait > self.busy_limit_s:
                raise DaemonBusy(
                    f"The daemon's queue stayed full for {waited:.0f} s.",
                    "other front ends are using it: try again later (`antoni-bridge status` shows its queue)",
                )
            report({"stage": BUSY_STAGE, "done": 0, "total": 0})
            waited += self._wait_out_busy(wait, wanted)
            wait = min(wait * 2, BUSY_LONGEST_WAIT_S)

    def _one_attempt(
        self,
        type_: str,
        content: dict[str, Any],
        report: Callable[[dict[str, Any]], None],
        on_token: Callable[[str], None] | None,
        wanted: Callable[[], bool],
        on_accepted: Callable[[dict[str, Any]], None] | None,
    ) -> Message:
        """Send the job once and read its messages to the terminal one; a cancel wanted goes out as soon
        as the job has an id."""
        job_id, cancel_sent = None, False

        def poll_cancel() -> None:
            nonlocal cancel_sent
            if job_id is not None and not cancel_sent and wanted():
                self.send("cancel", {"job_id": job_id})  # its reply has another parent: left unread
                cancel_sent = True

        for message in self.events(type_, content, on_wait=poll_cancel):
            if message.type == "accepted":
                job_id = message.content.get("job_id")
                if on_accepted is not None:
                    on_accepted(message.content)
            elif message.type == "progress":
                report(message.content)
            elif message.type == "token" and on_token is not None:
                on_token(message.content["text"])
        return message  # `events` ends with the terminal message

    @staticmethod
    def _wait_out_busy(seconds: float, wanted: Callable[[], bool]) -> float:
        """Sleep `seconds` (less when a cancel comes), in short steps so a cancel is seen at once."""
        start = time.monotonic()
        while (left := seconds - (time.monotonic() - start)) > 0:
            if wanted():
                raise Cancelled("while the daemon's queue was full")
            time.sleep(min(left, HEARTBEAT_S))
        return time.monotonic() - start

    def events(
        self,
        type_: str,
        content: dict[str, Any],
        idle_timeout_s: float = 600.0,
        on_wait: Callable[[], None] | None = None,
    ) -> Iterator[Message]:
        """Every message answering one job request, up to and including its terminal message.
        `on_wait` is called between messages (and while none come), on this thread."""
        self._refresh()
        sent = self.send(type_, content)
        while True:
            message = self._answer_to(sent, idle_timeout_s, on_wait)
            yield message
            if message.type in TERMINAL:
                return

    def _answer_to(self, sent: Message, timeout_s: float, on_wait: Callable[[], None] | None = None) -> Message:
        """The next message answering `sent`, heartbeating while the daemon works."""
        deadline = time.monotonic() + timeout_s
        self.last_heard = time.monotonic()
        while True:
            if on_wait is not None:
                on_wait()
            now = time.monotonic()
            if now - self.last_sent >= HEARTBEAT_S:  # also while events stream in: silence means death
                self.send("heartbeat", {})
            if now >= deadline:
                raise DaemonUnreachable(
                    f"The daemon at {self.info.address} did not answer within {timeout_s:.0f} s.", NOT_RUNNING_HINT
                )
            if not self.socket.poll(int(min(HEARTBEAT_S, deadline - now) * 1000), zmq.POLLIN):
                self._check_daemon_alive()
                continue
            message = self._receive()
            self.last_heard = time.monotonic()
            if message.parent_id == sent.msg_id or message.parent_id is None:
                if os.environ.get(CHECK_REPLIES) == "1":
                    from antoni_bridge.daemon.messages import check_reply

                    check_reply(sent.type, message.type, message.content)
                return message

    def _receive(self) -> Message:
        try:
            return self.session.parse(self.socket.recv_multipart())
        except ProtocolError as exc:
            if exc.code == "bad-signature":  # the daemon restarted and answers with its new key
                raise DaemonUnreachable("The daemon restarted (its key changed).", "ask again") from exc
            raise BridgeError(exc.message, exc.hint) from exc

    def _check_daemon_alive(self) -> None:
        """A daemon that died never sends its terminal message: notice it."""
        if is_loopback(self.info.address) and not self._local_daemon_alive():
            raise DaemonUnreachable("The daemon stopped before answering.", f"see its log, then {NOT_RUNNING_HINT}")
        if time.monotonic() - self.last_heard > DEAD_AFTER_S:
            raise DaemonUnreachable(
                f"The daemon at {self.info.address} has not answered for {DEAD_AFTER_S:.0f} s.",
                "check the network and the daemon's log",
            )

    def _local_daemon_alive(self) -> bool:
        try:
            return ConnectionInfo.read_running(self.connection_file).key == self.info.key
        except BridgeError:
            return False


def provenance_in_hello(hello: dict[str, Any]) -> dict[str, Any]:
    """What a daemon's `hello` says of the engine answering: its `provenance`, or (from daemons older than
    provenance) the version, weights, LLM and demo flag it names."""
    if "provenance" in hello:
        return dict(hello["provenance"])
    return {
        "antoni_bridge": str(hello.get("server", "")).removeprefix("antoni-bridge "),
        "weights": hello.get("weights"),
        "llm": hello.get("llm"),
        "demo": bool(hello.get("demo")),
    }


def saved_provenance(
    done: dict[str, Any], known: dict[str, Any], front_end: str, options_set: dict[str, Any]
) -> dict[str, Any]:
    """`done` with the provenance a front end saves beside an answer: the answer's own (`known` fills in
    for answers that carry none), its stop reason, the front end, and only the options the user set."""
    provenance = {**known, **done.get("provenance", {}), "front_end": front_end, "options_set": dict(options_set)}
    for key in ("stop_reason", "demo"):
        if key in done:
            provenance.setdefault(key, done[key])
    return {**done, "provenance": provenance}


def _progress_reporter(on_progress: Callable[[Any], None] | None) -> Callable[[dict[str, Any]], None]:
    """A progress event's content to `on_progress` as a `slides.planning.Progress`. Imported here, before
    the job is sent (the client starts light; an import in the loop would silence the heartbeats)."""
    if on_progress is None:
        return lambda content: None
    from antoni_bridge.slides.planning import Progress

    return lambda c: on_progress(Progress(c["stage"], c["done"], c["total"], c.get("rate", 0.0)))
