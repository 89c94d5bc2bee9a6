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
import ipaddress
import json
import math
import os
import re
import secrets
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from antoni_bridge.errors import BridgeError
from antoni_bridge.files import write_private
from antoni_bridge.platforms import pid_alive

TAG = b"antoni/1"
VERSION = 1
MAX_MESSAGE_BYTES = 32 * 2**20  # a field-of-view image for view mode fits; a runaway client does not
CLOCK_WINDOW_S = 300.0  # a message dated further from the receiver's clock is refused as stale
REPLAY_MEMORY = 250_000  # signatures remembered (each for twice the clock window); past that: refused
MAX_ID_CHARS = 128  # a msg_id longer than this is not echoed in a refusal's parent_id
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # the only way a lone surrogate gets into a JSON frame


class ProtocolError(Exception):
    """A message that cannot be accepted; `code` is what the error reply carries."""

    def __init__(self, code: str, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.code, self.message, self.hint = code, message, hint
        self.parent_id: str | None = None  # the refused message's msg_id, when its header could be read


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
        value = json.loads(data.decode("utf-8"), parse_constant=refuse)
        if _SURROGATE_ESCAPE.search(data):  # rare: pairs are fine, a lone half cannot be written back as UTF-8
            dumps(value)
        return value
    except (UnicodeError, ValueError, RecursionError) as exc:
        raise ProtocolError("invalid-json", f"A frame is not valid UTF-8 JSON ({exc}).", "send RFC 8259 JSON") from exc
    except ProtocolError as exc:  # dumps refused it
        raise ProtocolError("invalid-json", "A frame holds a value JSON cannot carry.", "send RFC 8259 JSON") from exc


@dataclass
class Session:
    """Signs outgoing and checks incoming messages with one key; refuses stale messages and replays.

    A message is accepted only when its `date` lies within CLOCK_WINDOW_S of this side's clock, and its
    signature is remembered for twice that window (a message dated at the window's future edge stays
    fresh that long), so a replay is refused as stale or as replayed, never accepted.
    """

    key: bytes
    session: str = field(default_factory=lambda: uuid.uuid4().hex)
    clock_window_s: float = CLOCK_WINDOW_S
    _seen: OrderedDict[bytes, float] = field(default_factory=OrderedDict)  # signature -> when to forget it

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
        """A checked message from the frames after the routing id, or a ProtocolError saying what is wrong
        (carrying the message's msg_id as `parent_id` whenever its header could be read)."""
        try:
            return self._parse(frames)
        except ProtocolError as exc:
            exc.parent_id = _peek_msg_id(frames)
            raise

    def _parse(self, frames: list[bytes]) -> Message:
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
        now = time.monotonic()
        self._forget_until(now)
        if signature in self._seen:
            raise ProtocolError("replayed", "This message was already received (a replay).", "send each message once")
        if len(self._seen) >= REPLAY_MEMORY:
            raise ProtocolError(
                "too-many",
                f"More than {REPLAY_MEMORY:,} messages arrived within {2 * self.clock_window_s:.0f} s.",
                "send fewer messages (heartbeats every 0.25 s are plenty) and try again shortly",
            )
        message = _message(loads(header_bytes), loads(content_bytes))
        self._check_fresh(message.date)
        self._seen[signature] = now + 2 * self.clock_window_s
        return message

    def _check_fresh(self, date: float) -> None:
        skew = date - time.time()
        if abs(skew) > self.clock_window_s:
            raise ProtocolError(
                "stale",
                f"The message is dated {skew:+.0f} s from this side's clock; at most "
                f"{self.clock_window_s:.0f} s either way is accepted.",
                "set the date of each message to the current time (seconds since 1970, UTC); check both clocks",
            )

    def _forget_until(self, now: float) -> None:
        while self._seen and next(iter(self._seen.values())) < now:
            self._seen.popitem(last=False)


def _peek_msg_id(frames: list[bytes]) -> str | None:
    """The msg_id of a refused message, when its header frame is small, JSON and names a short one."""
    if len(frames) < 3 or len(frames[2]) > 4096:
        return None
    try:
        msg_id = loads(frames[2]).get("msg_id")
    except (ProtocolError, AttributeError):
        return None
    return msg_id if isinstance(msg_id, str) and len(msg_id) <= MAX_ID_CHARS else None


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
    try:
        date = float(header["date"])
    except OverflowError:  # an integer past float's range
        date = math.inf
    if not math.isfinite(date):
        raise ProtocolError("bad-message", "The header's date is not a finite number.", "seconds since 1970, UTC")
    parent = header.get("parent_id")
    return Message(
        header["type"],
        content,
        header["msg_id"],
        header["session"],
        parent if isinstance(parent, str) else None,
        date,
    )


# ------------------------------------------------------------------------------ addresses

_TCP = re.compile(r"tcp://(?:\[(?P<ip6>[0-9A-Fa-f:]+)\]|(?P<host>[A-Za-z0-9.\-]+)):(?P<port>[0-9]{1,5}|\*)")


def is_loopback(address: str) -> bool:
    """Whether `address` binds loopback only: one `tcp://HOST:PORT` with HOST a loopback IP or `localhost`,
    or an `ipc://` path. Anything else (a `;` list of endpoints, an interface name, `*`) is not."""
    if address.startswith("ipc://"):
        return ";" not in address
    match = _TCP.fullmatch(address)
    if match is None:
        return False
    host = match["ip6"] or match["host"]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # an interface or host name: it may be any address
        return False


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
        write_private(path, dumps(self.__dict__))

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

    @classmethod
    def read_running(cls, path: Path) -> ConnectionInfo:
        """The connection file's contents, refused as "not running" when it names a local daemon whose
        process has ended (a daemon killed without a chance to remove its file)."""
        info = cls.read(path)
        if is_loopback(info.address) and not (isinstance(info.pid, int) and pid_alive(info.pid)):
            raise BridgeError(
                f"The connection file {path} was left by a daemon (pid {info.pid}) that has ended: "
                "the daemon is not running.",
                "start it with `antoni-bridge serve` (it replaces the file)",
            )
        return info
