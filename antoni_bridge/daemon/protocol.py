"""Protocol v1 on the wire: framing, signing, strict JSON, replay rejection (docs/protocol.md).

A message is four ZeroMQ frames after the ROUTER's routing id:

    b"antoni/1"   the protocol tag and version
    signature     hex HMAC-SHA256 of the header and content frames, keyed by the connection file's key
    header        JSON {"msg_id", "type", "session", "date", "version", "parent_id"?}
    content       JSON object

This module knows nothing about sockets or jobs (like jupyter_client's Session): it turns messages
into frames and frames into checked messages, so the daemon, the Python client and tests share it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import secrets
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from antoni_bridge.errors import BridgeError

TAG = b"antoni/1"
VERSION = 1
MAX_MESSAGE_BYTES = 32 * 2**20  # a field-of-view image for view mode fits; a runaway client does not
REPLAY_MEMORY = 100_000  # signatures remembered per session key


class ProtocolError(Exception):
    """A message that cannot be accepted; `code` is what the error reply carries."""

    def __init__(self, code: str, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.code, self.message, self.hint = code, message, hint


@dataclass(frozen=True)
class Message:
    type: str
    content: dict[str, Any]
    msg_id: str
    session: str
    parent_id: str | None = None
    date: float = 0.0

    def header(self) -> dict[str, Any]:
        header = {"msg_id": self.msg_id, "type": self.type, "session": self.session, "date": self.date}
        header["version"] = VERSION
        if self.parent_id is not None:
            header["parent_id"] = self.parent_id
        return header


def dumps(value: Any) -> bytes:
    """UTF-8 JSON without NaN or Infinity (other languages' parsers reject them)."""
    try:
        return json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except ValueError as exc:
        raise ProtocolError(
            "invalid-json", f"A value cannot be sent as JSON ({exc}).", "replace NaN and Infinity"
        ) from exc


def loads(data: bytes) -> Any:
    def refuse(constant: str) -> Any:
        raise ValueError(f"bare {constant} is not JSON")

    try:
        return json.loads(data.decode("utf-8"), parse_constant=refuse)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError("invalid-json", f"A frame is not valid UTF-8 JSON ({exc}).", "send RFC 8259 JSON") from exc


@dataclass
class Session:
    """Signs outgoing and checks incoming messages with one key; remembers signatures to refuse replays."""

    key: bytes
    session: str = field(default_factory=lambda: uuid.uuid4().hex)
    _seen: OrderedDict[bytes, None] = field(default_factory=OrderedDict)

    def sign(self, header: bytes, content: bytes) -> bytes:
        mac = hmac.new(self.key, digestmod=hashlib.sha256)
        mac.update(header)
        mac.update(content)
        return mac.hexdigest().encode("ascii")

    def message(self, type_: str, content: dict[str, Any], parent: Message | None = None) -> Message:
        return Message(type_, content, uuid.uuid4().hex, self.session, parent.msg_id if parent else None, time.time())

    def frames(self, message: Message) -> list[bytes]:
        header, content = dumps(message.header()), dumps(message.content)
        return [TAG, self.sign(header, content), header, content]

    def parse(self, frames: list[bytes]) -> Message:
        """A checked message from the frames after the routing id, or a ProtocolError saying what is wrong."""
        size = sum(len(f) for f in frames)
        if size > MAX_MESSAGE_BYTES:
            raise ProtocolError("too-large", f"The message has {size:,} bytes; the limit is {MAX_MESSAGE_BYTES:,}.")
        if len(frames) != 4 or frames[0] != TAG:
            tag = frames[0][:16] if frames else b""
            raise ProtocolError(
                "bad-frames",
                f"Expected 4 frames starting with {TAG!r}, got {len(frames)} starting with {tag!r}.",
                "the client speaks another protocol or version; see docs/protocol.md",
            )
        _, signature, header_bytes, content_bytes = frames
        if not hmac.compare_digest(signature, self.sign(header_bytes, content_bytes)):
            raise ProtocolError(
                "bad-signature",
                "The message's signature does not match the key.",
                "the daemon restarted with a new key: read the connection file again",
            )
        if signature in self._seen:
            raise ProtocolError("replayed", "This message was already received (a replay).", "send each message once")
        self._remember(signature)
        header, content = loads(header_bytes), loads(content_bytes)
        return _message(header, content)

    def _remember(self, signature: bytes) -> None:
        self._seen[signature] = None
        while len(self._seen) > REPLAY_MEMORY:
            self._seen.popitem(last=False)


def _message(header: Any, content: Any) -> Message:
    if not isinstance(header, dict) or not isinstance(content, dict):
        raise ProtocolError("bad-message", "The header and the content must be JSON objects.")
    fields = {"msg_id": str, "type": str, "session": str, "date": (int, float), "version": int}
    for name, kind in fields.items():
        if not isinstance(header.get(name), kind) or isinstance(header.get(name), bool):
            raise ProtocolError("bad-message", f"The header's {name!r} is missing or of the wrong type.")
    if header["version"] != VERSION:
        raise ProtocolError(
            "bad-version",
            f"The message is protocol {header['version']}; this side speaks {VERSION}.",
            "update the older of the two (antoni-bridge and its front end)",
        )
    if not math.isfinite(header["date"]):
        raise ProtocolError("bad-message", "The header's date is not a finite number.")
    parent = header.get("parent_id")
    return Message(
        header["type"],
        content,
        header["msg_id"],
        header["session"],
        parent if isinstance(parent, str) else None,
        float(header["date"]),
    )


# ------------------------------------------------------------------------------ the connection file


@dataclass(frozen=True)
class ConnectionInfo:
    """What a client needs to reach the daemon: written by the daemon at every start, owner-only."""

    address: str
    key: str  # hex; bytes of it are the HMAC key
    pid: int
    protocol: int = VERSION
    curve_server_key: str | None = None  # Z85 public key when the daemon listens beyond loopback

    @property
    def key_bytes(self) -> bytes:
        return self.key.encode("ascii")

    @classmethod
    def new(cls, address: str, curve_server_key: str | None = None) -> ConnectionInfo:
        return cls(address, secrets.token_hex(32), os.getpid(), VERSION, curve_server_key)

    def write(self, path: Path) -> None:
        """Atomically, readable by the owner only (the key is a password)."""
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(dumps(self.__dict__))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def read(cls, path: Path) -> ConnectionInfo:
        try:
            values = loads(path.read_bytes())
            return cls(
                **{k: values[k] for k in ("address", "key", "pid", "protocol")},
                curve_server_key=values.get("curve_server_key"),
            )
        except FileNotFoundError:
            raise BridgeError(
                f"No connection file at {path}: the daemon is not running.", "start it with `antoni-bridge serve`"
            ) from None
        except (OSError, ProtocolError, KeyError, TypeError) as exc:
            raise BridgeError(f"The connection file {path} is damaged ({exc}).", "restart the daemon") from exc
