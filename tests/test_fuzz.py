"""Fuzzing a real `serve --demo` daemon with malformed messages: seeded, bounded, and asserting what a
hostile or careless client must never achieve (issue 13's goal).

Every field of every request type (shutdown aside: it is meant to stop the daemon) is replaced by
hostile values or dropped, signed and unsigned. Then: the daemon and its worker are alive, every
request had exactly one answer (accepted jobs: exactly one terminal message), no `internal` error,
and a real ask is still answered. ANTONI_FUZZ_COUNT sets the number of messages (default 2000:
under a minute on two busy cores, daemon start included); ANTONI_FUZZ_SEED the seed.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from antoni_bridge.daemon.protocol import TAG, Message
from tests.test_daemon import ASK, RawClient

COUNT = int(os.environ.get("ANTONI_FUZZ_COUNT", "2000"))
SEED = int(os.environ.get("ANTONI_FUZZ_SEED", "13"))
TERMINAL = ("done", "error", "cancelled")
ANSWERED_AT_ONCE = ("hello", "status", "cancel", "heartbeat", "busy", "error")


def _png() -> str:
    picture = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 120, 160)).save(picture, format="PNG")
    return base64.b64encode(picture.getvalue()).decode()


RECTANGLE = {"type": "Polygon", "coordinates": [[[10, 10], [500, 10], [500, 400], [10, 400], [10, 10]]]}
BASES: dict[str, dict[str, Any]] = {  # well-formed requests, mutated one field at a time
    "hello": {},
    "status": {},
    "heartbeat": {},
    "cancel": {"job_id": "0123456789ab"},
    "ask": {**ASK, "features": "/nowhere/latents.pt"},
    "score": {"slide": "/nowhere/slide.svs", "region": RECTANGLE, "question": "Organ?", "choices": ["lung", "skin"]},
    "view": {**ASK, "image": _png(), "options": {"max_new_tokens": 2}},
    "embed": {"slide": "/nowhere/slide.svs", "region": RECTANGLE, "slide_mpp": 0.5},
    "forget": {"slide": "/nowhere/slide.svs"},
    "load": {"models": ["model"]},
    "unload": {"models": ["encoders"]},
    "explain": {
        "conversation": ASK["conversation"],
        "features": "/nowhere/latents.pt",
        "answer": "Yes.",
        "method": "occlusion",
        "groups": 8,
        "random_orders": 2,
    },
    "similar": {"slide": "/nowhere/slide.svs", "region": RECTANGLE, "top": 5, "within": "/nowhere"},
    "zero_shot": {
        "features": "/nowhere/latents.pt",
        "prompts": {"a": ["x", "y"], "b": ["z"]},
        "map": True,
        "groups": 4,
    },
    "report": {
        "slide": "/nowhere/slide.svs",
        "region": RECTANGLE,
        "prompt": "Diagnosis:",
        "max_new_tokens": 4,
        "beams": 2,
    },
}
EXTRA_FIELDS = (
    "slide",
    "features",
    "region",
    "slide_mpp",
    "options",
    "conversation",
    "image",
    "all",
    "models",
    "top",
    "within",
    "labels",
    "prompts",
    "map",
    "groups",
    "prompt",
    "beams",
    "answer",
    "method",
    "random_orders",
)


def _deep(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


HOSTILE: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1,
    2**70,
    -(2**63),
    1e29,
    -1e308,
    6.5,
    "",
    " ",
    "\udc80",
    "/slides/\ud800.svs",
    "/slides/a\0b.svs",
    "/" + "a" * 100_000,
    "x" * 5000,
    "relative/slide.svs",
    "~nobody-here/slide.svs",
    "/dev/zero",
    "/proc/self/mem",
    "/",
    "../../../../etc/passwd",
    [],
    {},
    [None],
    ["model", "model", "encoders"],
    [{"role": "user", "content": None}],
    [{"role": None, "content": "Q"}],
    [{"role": "user", "content": "\udc80"}],
    [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
    {"max_new_tokens": 10**9},
    {"max_new_tokens": 2, "top_k": -3},
    {"temperature": 0, "greedy": False},
    {"seed": "x"},
    {"type": "Polygon", "coordinates": [[[0, 0], [1e308, 0], [0, 1e308], [0, 0]]]},
    {"type": "Polygon", "coordinates": [[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]},
    {"type": "Polygon", "coordinates": [[[1, 2]]]},
    {"type": "Polygon", "coordinates": "nope"},
    {"type": "Point", "coordinates": [1, 2]},
    {"type": "LineString", "coordinates": [[0, 0], [5, 5]]},
    {"type": "GeometryCollection", "geometries": [RECTANGLE]},
    {"type": "\udc80", "coordinates": []},
    {"type": "Polygon", "coordinates": [[[x % 97, x // 97] for x in range(50_000)]]},
    _deep(200),
    "data:image/png;base64,AAAA",
    base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 64).decode(),
]


def _mutated(rng: random.Random, type_: str) -> dict[str, Any]:
    content = json.loads(json.dumps(BASES[type_]))
    field = rng.choice([*content, *EXTRA_FIELDS] or ["x"])
    if rng.random() < 0.1:
        content.pop(field, None)
    else:
        content[field] = rng.choice(HOSTILE)
    return content


def _frames(client: RawClient, type_: str, content: dict[str, Any], signed: bool) -> tuple[str, list[bytes]]:
    """Frames as a client from another language writes them: ASCII JSON, so surrogates travel as escapes."""
    msg_id = uuid.uuid4().hex
    header = {"msg_id": msg_id, "type": type_, "session": "fuzz", "date": time.time(), "version": 1}
    head, body = json.dumps(header).encode(), json.dumps(content).encode()
    return msg_id, [TAG, client.session.sign(head, body) if signed else b"0" * 64, head, body]


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Path]]:
    """A daemon of this module's own, so a death is seen (its process) and harms no other test."""
    from antoni_bridge.daemon.launch import start_daemon

    home = tmp_path_factory.mktemp("fuzz-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ANTONI_BRIDGE_HOME", str(home))
        process = start_daemon(["--demo", "--address", "tcp://127.0.0.1:*"], home / "daemon.json", timeout_s=180)
    yield process, home / "daemon.json"
    process.kill()
    process.wait()


class Ledger:
    """Every reply, by the request it answers."""

    def __init__(self) -> None:
        self.by_request: dict[str, list[Message]] = defaultdict(list)
        self.all: list[Message] = []

    def take(self, client: RawClient, wait_ms: int) -> bool:
        if not client.socket.poll(wait_ms):
            return False
        while client.socket.poll(0):
            message = client.session.parse(client.socket.recv_multipart())
            self.all.append(message)
            if message.parent_id is not None:
                self.by_request[message.parent_id].append(message)
        return True

    def open_jobs(self, sent: dict[str, str]) -> list[str]:
        """Accepted requests still without their terminal message."""
        return [
            m
            for m in sent
            if any(r.type == "accepted" for r in self.by_request[m])
            and not any(r.type in TERMINAL for r in self.by_request[m])
        ]


def test_thousands_of_malformed_messages_leave_the_daemon_whole(fuzzed: tuple[Any, Path], demo_20x: Path) -> None:
    process, connection = fuzzed
    rng = random.Random(SEED)
    client, ledger = RawClient(connection), Ledger()
    sent: dict[str, str] = {}  # msg_id -> type, of the signed requests
    unsigned = 0
    beat = time.monotonic()
    try:
        for _ in range(COUNT):
            type_ = rng.choice(list(BASES))
            signed = rng.random() < 0.8
            msg_id, frames = _frames(client, type_, _mutated(rng, type_), signed)
            client.socket.send_multipart(frames)
            if signed:
                sent[msg_id] = type_
            else:
                unsigned += 1
            if time.monotonic() - beat > 0.25:
                client.socket.send_multipart(client.session.frames(client.session.message("heartbeat", {})))
                beat = time.monotonic()
            ledger.take(client, 0)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (ledger.open_jobs(sent) or not all(ledger.by_request[m] for m in sent)):
            client.socket.send_multipart(client.session.frames(client.session.message("heartbeat", {})))
            ledger.take(client, 250)
        assert process.poll() is None, "the daemon died"
        codes = [m.content.get("code") for m in ledger.all if m.type == "error"]
        assert "internal" not in codes, [m.content for m in ledger.all if m.content.get("code") == "internal"][:3]
        assert not [m for m in ledger.all if "could not be handled" in str(m.content.get("message"))]
        assert codes.count("bad-signature") == unsigned
        unanswered = [sent[m] for m in sent if not ledger.by_request[m]]
        assert not unanswered, f"{len(unanswered)} requests never answered: {sorted(set(unanswered))}"
        assert not ledger.open_jobs(sent), "jobs that never ended (a worker death)"
        for msg_id, replies in ledger.by_request.items():
            kinds = [r.type for r in replies]
            if "accepted" in kinds:
                assert sum(k in TERMINAL for k in kinds) == 1 and kinds.count("accepted") == 1, kinds
            elif msg_id in sent:
                assert len(kinds) == 1 and kinds[0] in ANSWERED_AT_ONCE, kinds
        assert sum("accepted" in [r.type for r in replies] for replies in ledger.by_request.values()) > COUNT // 100
        msg_id = client.send("ask", {**ASK, "slide": str(demo_20x)})
        assert client.until_end(msg_id, wait_s=120)[-1].type == "done", "a real ask after the fuzzing"
    finally:
        client.close()


# Header fields are the wire layer's (daemon/protocol.py, the `security` branch fixes them): a lone
# surrogate in a header string or a huge integer `date` killed the daemon for every request type.
HEADER_CASES: dict[str, dict[str, Any]] = {
    "msg_id surrogate": {"msg_id": "\udc80"},
    "type surrogate": {"type": "\udc80"},
    "session surrogate": {"session": "\udc80"},
    "parent_id surrogate": {"parent_id": "\udc80"},
    "huge integer date": {"date": 10**29},
    "huge float date": {"date": 1e300},
}


def test_hostile_headers_are_refused_and_the_daemon_lives(tmp_path: Path) -> None:
    from antoni_bridge.daemon.launch import start_daemon

    connection = tmp_path / "daemon.json"
    process = start_daemon(["--demo", "--address", "tcp://127.0.0.1:*"], connection, timeout_s=180)
    client = RawClient(connection)
    try:
        for name, change in HEADER_CASES.items():
            for type_ in ("hello", "ask", "unload"):
                header = {"msg_id": uuid.uuid4().hex, "type": type_, "session": "s", "date": time.time()}
                head = json.dumps({**header, "version": 1, **change}).encode()
                body = json.dumps(BASES[type_]).encode()
                client.socket.send_multipart([TAG, client.session.sign(head, body), head, body])
                assert client.socket.poll(3000), f"{name} on {type_}: no reply"
                reply = client.session.parse(client.socket.recv_multipart())
                assert reply.type == "error" and reply.content["code"] != "internal", (name, reply.content)
                assert process.poll() is None, f"{name} on {type_} ended the daemon"
        msg_id = client.send("hello", {})
        assert next(m for m in client.replies(10) if m.parent_id == msg_id).type == "hello"
    finally:
        client.close()
        process.kill()
        process.wait()
