"""The Python client of the daemon: reads the connection file, sends signed requests, iterates events.

Front ends never touch tensors: they send "this slide or region + this conversation" and read back
progress, tokens and exactly one terminal message per job.

Liveness: while waiting, the client heartbeats; the daemon answers every heartbeat, so silence means
the daemon is gone (a local daemon's process is also checked directly, which notices a crash at once).
A daemon restarted since the last request has a new key: the client reads the connection file before
each request and reconnects. Idempotent requests (`hello`, `status`) are retried on a fresh socket
when the daemon does not answer (the Lazy Pirate pattern).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import zmq

from antoni_bridge import paths
from antoni_bridge.daemon.protocol import ConnectionInfo, Message, ProtocolError, Session, is_loopback
from antoni_bridge.errors import BridgeError

TERMINAL = ("done", "error", "cancelled", "busy")
DEAD_AFTER_S = 5.0  # no message at all (heartbeat replies included) for this long: the daemon is gone
HEARTBEAT_S = 0.25  # while waiting for an answer; the daemon cancels the jobs of silent clients
IDEMPOTENT = ("hello", "status")
RETRIES = 3
RETRY_WAIT_S = 0.5
NOT_RUNNING_HINT = "start it with `antoni-bridge serve`"
CHECK_REPLIES = "ANTONI_BRIDGE_CHECK_REPLIES"  # "1": every reply is checked against the schema (the tests set it)


class DaemonUnreachable(BridgeError):
    """The daemon did not answer, stopped, or restarted with another key: worth a retry when idempotent."""


class Client:
    def __init__(self, connection_file: Path | None = None, timeout_s: float = DEAD_AFTER_S) -> None:
        self.connection_file = connection_file or paths.connection_file()
        self.timeout_s = timeout_s
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

    def events(self, type_: str, content: dict[str, Any], idle_timeout_s: float = 600.0) -> Iterator[Message]:
        """Every message answering one job request, up to and including its terminal message."""
        self._refresh()
        sent = self.send(type_, content)
        while True:
            message = self._answer_to(sent, idle_timeout_s)
            yield message
            if message.type in TERMINAL:
                return

    def _answer_to(self, sent: Message, timeout_s: float) -> Message:
        """The next message answering `sent`, heartbeating while the daemon works."""
        deadline = time.monotonic() + timeout_s
        self.last_heard = time.monotonic()
        while True:
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
