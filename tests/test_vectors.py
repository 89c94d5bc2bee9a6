"""The shared test vectors (tests/vectors/, see its README) against a real `serve --demo` daemon: from Python
here, and from the QuPath panel's own Groovy client code with the real JeroMQ jar (vectors_check.groovy).

Each vector is a message signed with the known test key. Before it is sent, its msg_id and date are made
fresh and it is signed again with the daemon's key (or the test key, where the vector is about a wrong
key); the replies to it must be the vector's `expect`, in order, and each must match the schema.
`python -m tests.test_vectors` signs the vectors again after one was edited.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import zmq

from antoni_bridge.daemon.messages import check_reply
from antoni_bridge.daemon.protocol import ConnectionInfo, Message, Session
from tests.qupath_runtime import require, run

VECTORS = Path(__file__).parent / "vectors"
TEST_KEY = (VECTORS / "test-key.txt").read_text(encoding="utf-8").strip()
VECTOR_DATE = '"date":1764633600.0'  # every vector's date, replaced by the time of sending
SKIPPED = ("progress", "token")  # a job's events between `accepted` and its end vary with the machine
EXTRA_WAIT_S = 0.3  # after the expected replies: time for a reply too many to show up


def vectors() -> dict[str, dict[str, Any]]:
    return {path.stem: json.loads(path.read_text(encoding="utf-8")) for path in sorted(VECTORS.glob("*.json"))}


def sign(key: str, header: str, content: str) -> str:
    mac = hmac.new(key.encode("utf-8"), digestmod=hashlib.sha256)
    mac.update(header.encode("utf-8"))
    mac.update(content.encode("utf-8"))
    return mac.hexdigest()


def expected(vector: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"type": e["type"], "code": e.get("code"), "parent": e.get("parent", "request")} for e in vector["expect"]]


def prepared(name: str, vector: dict[str, Any], daemon_key: str) -> tuple[str, list[bytes]]:
    """The vector's frames with a fresh msg_id and date, signed for sending; and the msg_id."""
    frames, send = list(vector["frames"]), vector["send"]
    msg_id = f"vector-{name}-{uuid.uuid4().hex[:8]}"
    if len(frames) >= 3:
        date = time.time() + send.get("date_offset_s", 0)
        header = frames[2].replace(f'"msg_id":"vector-{name}"', f'"msg_id":"{msg_id}"')
        frames[2] = header.replace(VECTOR_DATE, f'"date":{date:.3f}')
    if len(frames) == 4:
        frames[1] = sign(TEST_KEY if send.get("key") == "test" else daemon_key, frames[2], frames[3])
    return msg_id, [frame.encode("utf-8") for frame in frames]


def observed(message: Message, msg_id: str) -> dict[str, Any]:
    parent = "request" if message.parent_id == msg_id else "none"
    return {"type": message.type, "code": message.content.get("code"), "parent": parent}


class VectorClient:
    """A DEALER that sends vectors and heartbeats while it waits, as any client must."""

    def __init__(self, connection: Path) -> None:
        self.info = ConnectionInfo.read(connection)
        self.session = Session(self.info.key_bytes)
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.linger = 0
        self.socket.connect(self.info.address)
        self.beat = 0.0

    def replies(self, name: str, vector: dict[str, Any]) -> Iterator[tuple[Message, dict[str, Any]]]:
        """The replies to one vector (a job's progress and tokens left out), until its expected number came
        and no other followed within EXTRA_WAIT_S, or 60 s passed."""
        msg_id, frames = prepared(name, vector, self.info.key)
        for _ in range(vector["send"].get("times", 1)):
            self.socket.send_multipart(frames)
        count, deadline, settled = len(vector["expect"]), time.monotonic() + 60, None
        while time.monotonic() < deadline and (settled is None or time.monotonic() < settled):
            self._heartbeat()
            if self.socket.poll(50):
                message = self.session.parse(self.socket.recv_multipart())
                if message.parent_id in (msg_id, None) and message.type not in SKIPPED:
                    yield message, observed(message, msg_id)
                    count -= 1
                    settled = time.monotonic() + EXTRA_WAIT_S if count <= 0 else None

    def _heartbeat(self) -> None:
        if time.monotonic() - self.beat >= 0.25:
            self.socket.send_multipart(self.session.frames(self.session.message("heartbeat", {})))
            self.beat = time.monotonic()

    def close(self) -> None:
        self.socket.close()
        self.context.term()


def request_type(vector: dict[str, Any]) -> str:
    try:
        return json.loads(vector["frames"][2])["type"]
    except (IndexError, ValueError, KeyError):
        return "unreadable"


def test_every_vector_is_signed_with_the_test_key_and_expects_a_known_reply() -> None:
    found = vectors()
    assert len(found) >= 40
    for name, vector in found.items():
        frames = vector["frames"]
        if len(frames) == 4:
            assert frames[1] == sign(TEST_KEY, frames[2], frames[3]), f"{name}: run python -m tests.test_vectors"
        assert vector["description"].endswith(".") and vector["expect"], name
        assert f'"msg_id":"vector-{name}"' in "".join(frames[2:3]) or len(frames) < 3, name
    codes = {e.get("code") for v in found.values() for e in v["expect"]}
    assert codes >= {"bad-request", "bad-input", "bad-signature", "stale", "replayed", "invalid-json", "bad-frames"}


def test_the_daemon_answers_every_vector_as_expected_and_by_the_schema(daemon: Path) -> None:
    client = VectorClient(daemon)
    try:
        got: dict[str, list[dict[str, Any]]] = {}
        for name, vector in vectors().items():
            got[name] = []
            for message, seen in client.replies(name, vector):
                check_reply(request_type(vector), message.type, message.content)
                got[name].append(seen)
    finally:
        client.close()
    assert got == {name: expected(vector) for name, vector in vectors().items()}


def test_the_qupath_panels_client_code_answers_every_vector_alike(daemon: Path, tmp_path: Path) -> None:
    """The panel's Protocol class signs each vector as Python does, and its replies over JeroMQ are the same."""
    require()
    seen = run("vectors_check.groovy", str(daemon), str(VECTORS), prefs=tmp_path, timeout=600)
    assert seen["signatures"] == {name: True for name, v in vectors().items() if len(v["frames"]) == 4}
    assert seen["replies"] == {name: expected(vector) for name, vector in vectors().items()}


def sign_vectors() -> None:
    """Sign every four-frame vector with the test key, after editing one."""
    for path in sorted(VECTORS.glob("*.json")):
        vector = json.loads(path.read_text(encoding="utf-8"))
        frames = vector["frames"]
        if len(frames) == 4:
            frames[1] = sign(TEST_KEY, frames[2], frames[3])
        path.write_text(json.dumps(vector, indent=2, ensure_ascii=True) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sign_vectors()
