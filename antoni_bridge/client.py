"""The Python client of the daemon: reads the connection file, sends signed requests, iterates events.

Front ends never touch tensors: they send "this slide or region + this conversation" and read back
progress, tokens and exactly one terminal message per job.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import zmq

from antoni_bridge import paths
from antoni_bridge.daemon.protocol import ConnectionInfo, Message, ProtocolError, Session
from antoni_bridge.errors import BridgeError

TERMINAL = ("done", "error", "cancelled", "busy")
DEAD_AFTER_S = 5.0
HEARTBEAT_S = 0.25  # while waiting for a job's events; the daemon cancels the jobs of silent clients


class Client:
    def __init__(self, connection_file: Path | None = None, timeout_s: float = DEAD_AFTER_S) -> None:
        self.connection_file = connection_file or paths.connection_file()
        self.timeout_s = timeout_s
        self.info = ConnectionInfo.read(self.connection_file)
        self.session = Session(self.info.key_bytes)
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.linger = 0
        self.socket.connect(self.info.address)
        self.last_sent = time.monotonic()

    def close(self) -> None:
        self.socket.close()
        self.context.term()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, type_: str, content: dict[str, Any]) -> Message:
        message = self.session.message(type_, content)
        self.socket.send_multipart(self.session.frames(message))
        self.last_sent = time.monotonic()
        return message

    def receive(self, timeout_s: float | None = None) -> Message:
        """The next message from the daemon, or a BridgeError naming the likely cause."""
        if not self.socket.poll(int((timeout_s or self.timeout_s) * 1000), zmq.POLLIN):
            raise BridgeError(
                f"The daemon at {self.info.address} did not answer within {timeout_s or self.timeout_s:.0f} s.",
                "is it running? start it with `antoni-bridge serve`",
            )
        try:
            return self.session.parse(self.socket.recv_multipart())
        except ProtocolError as exc:
            raise BridgeError(exc.message, exc.hint) from exc

    def request(self, type_: str, content: dict[str, Any] | None = None) -> Message:
        """One request, one reply (hello, status, cancel, shutdown)."""
        sent = self.send(type_, content or {})
        reply = self._answer_to(sent, self.timeout_s)
        if reply.type == "error":
            raise BridgeError(
                reply.content.get("message", "The daemon refused the request."), reply.content.get("hint", "")
            )
        return reply

    def events(self, type_: str, content: dict[str, Any], idle_timeout_s: float = 600.0) -> Iterator[Message]:
        """Every message answering one job request, up to and including its terminal message."""
        sent = self.send(type_, content)
        while True:
            message = self._answer_to(sent, idle_timeout_s)
            yield message
            if message.type in TERMINAL:
                return

    def _check_daemon_alive(self) -> None:
        """A local daemon that died mid-job never sends its terminal message: notice it at once."""
        try:
            os.kill(self.info.pid, 0)
            alive = ConnectionInfo.read(self.connection_file).key == self.info.key
        except (ProcessLookupError, BridgeError):
            alive = False
        except PermissionError:  # another user's process: it exists
            alive = True
        if not alive:
            raise BridgeError(
                "The daemon stopped before answering.", "see its log, then start it again with `antoni-bridge serve`"
            )

    def _answer_to(self, sent: Message, timeout_s: float) -> Message:
        """The next message answering `sent`, heartbeating while the daemon works."""
        deadline = time.monotonic() + timeout_s
        while True:
            now = time.monotonic()
            if now - self.last_sent >= HEARTBEAT_S:  # also while events stream in: silence means death
                self.send("heartbeat", {})
            left = deadline - now
            if left <= 0:
                self.receive(0.001)  # raises the "did not answer" error
            if not self.socket.poll(int(min(HEARTBEAT_S, left) * 1000), zmq.POLLIN):
                self._check_daemon_alive()
                continue
            message = self.receive(0.001)
            if message.parent_id == sent.msg_id or message.parent_id is None:
                return message
