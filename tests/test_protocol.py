"""Protocol v1 framing and signing, over real ZeroMQ sockets on loopback."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest
import zmq

from antoni_bridge.daemon import protocol
from antoni_bridge.daemon.protocol import (
    CLOCK_WINDOW_S,
    MAX_MESSAGE_BYTES,
    TAG,
    ConnectionInfo,
    ProtocolError,
    Session,
    is_loopback,
)
from antoni_bridge.errors import BridgeError


@pytest.fixture
def sockets():
    context = zmq.Context()
    router, dealer = context.socket(zmq.ROUTER), context.socket(zmq.DEALER)
    for socket in (router, dealer):
        socket.linger = 0
        socket.rcvtimeo = 5000
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer.connect(f"tcp://127.0.0.1:{port}")
    yield router, dealer
    router.close()
    dealer.close()
    context.term()


def _through(router: zmq.Socket, dealer: zmq.Socket, frames: list[bytes]) -> list[bytes]:
    dealer.send_multipart(frames)
    identity, *rest = router.recv_multipart()
    assert identity
    return rest


def test_a_signed_message_arrives_whole(sockets) -> None:
    router, dealer = sockets
    client, daemon = Session(b"k" * 64), Session(b"k" * 64)
    sent = client.message("ask", {"question": "Welche Organ? 器官", "region": [[0, 0], [1.5, 2]]})
    received = daemon.parse(_through(router, dealer, client.frames(sent)))
    assert received == sent


def test_wrong_key_replay_and_foreign_frames_are_refused(sockets) -> None:
    router, dealer = sockets
    client, daemon = Session(b"old-key"), Session(b"new-key")
    with pytest.raises(ProtocolError) as wrong:
        daemon.parse(_through(router, dealer, client.frames(client.message("status", {}))))
    assert wrong.value.code == "bad-signature" and "read the connection file again" in wrong.value.hint

    daemon = Session(b"old-key")
    frames = client.frames(client.message("status", {}))
    daemon.parse(_through(router, dealer, frames))
    with pytest.raises(ProtocolError) as replay:
        daemon.parse(_through(router, dealer, frames))
    assert replay.value.code == "replayed"

    for frames in ([b"hello"], [b"antoni/2", b"sig", b"{}", b"{}"], [TAG, b"", b"", b"", b""]):
        with pytest.raises(ProtocolError) as foreign:
            daemon.parse(_through(router, dealer, frames))
        assert foreign.value.code == "bad-frames"


def test_json_rules_nan_and_malformed_content(sockets) -> None:
    router, dealer = sockets
    session = Session(b"k")
    with pytest.raises(ProtocolError) as nan:
        session.frames(session.message("ask", {"x": float("nan")}))
    assert nan.value.code == "invalid-json" and "NaN" in nan.value.hint
    header = json.dumps({"msg_id": "1", "type": "ask", "session": "s", "date": 1.0, "version": 1}).encode()
    for content in (b'{"x": NaN}', b"\xff\xfe", b"[1, 2]", b'{"x": Infinity}'):
        frames = [TAG, session.sign(header, content), header, content]
        with pytest.raises(ProtocolError) as bad:
            session.parse(_through(router, dealer, frames))
        assert bad.value.code in ("invalid-json", "bad-message")


def test_another_protocol_version_is_named() -> None:
    session = Session(b"k")
    header = json.dumps({"msg_id": "1", "type": "hello", "session": "s", "date": 1.0, "version": 2}).encode()
    with pytest.raises(ProtocolError) as other:
        session.parse([TAG, session.sign(header, b"{}"), header, b"{}"])
    assert other.value.code == "bad-version" and "protocol 2" in other.value.message


def test_oversize_messages_are_refused_before_parsing() -> None:
    session = Session(b"k")
    with pytest.raises(ProtocolError) as big:
        session.parse([TAG, b"", b"{}", b" " * (MAX_MESSAGE_BYTES + 1)])
    assert big.value.code == "too-large"


def test_connection_file_is_private_atomic_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / ".antoni-bridge" / "daemon.json"
    info = ConnectionInfo.new("tcp://127.0.0.1:5555")
    info.write(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ConnectionInfo.read(path) == info and len(info.key) == 64
    assert not list(path.parent.glob(".*.tmp"))
    with pytest.raises(BridgeError, match="the daemon is not running"):
        ConnectionInfo.read(tmp_path / "none.json")
    path.write_text('{"address": 1')
    with pytest.raises(BridgeError, match="damaged"):
        ConnectionInfo.read(path)


def _signed(session: Session, header: dict) -> list[bytes]:
    head = json.dumps(header).encode()
    return [TAG, session.sign(head, b"{}"), head, b"{}"]


def test_a_message_outside_the_clock_window_is_stale_and_a_replay_inside_it_is_replayed() -> None:
    session = Session(b"k")
    base = {"msg_id": "1", "type": "status", "session": "s", "version": 1}
    for date in (1.0, 4102444800.0, time.time() - CLOCK_WINDOW_S - 5, time.time() + CLOCK_WINDOW_S + 5):
        with pytest.raises(ProtocolError) as stale:
            session.parse(_signed(session, {**base, "date": date}))
        assert stale.value.code == "stale" and stale.value.parent_id == "1"
    fresh = _signed(session, {**base, "date": time.time()})
    session.parse(fresh)
    with pytest.raises(ProtocolError) as replay:
        session.parse(fresh)
    assert replay.value.code == "replayed"


def test_replay_memory_outlasts_the_window_and_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    session = Session(b"k", clock_window_s=0.2)
    monkeypatch.setattr(protocol, "REPLAY_MEMORY", 3)
    frames = [session.frames(session.message("heartbeat", {})) for _ in range(4)]
    for sent in frames[:3]:
        session.parse(sent)
    with pytest.raises(ProtocolError) as full:  # remembering no more would let a replay through
        session.parse(frames[3])
    assert full.value.code == "too-many"
    time.sleep(0.45)  # past twice the window: forgotten, and a replay of them is stale now
    with pytest.raises(ProtocolError) as stale:
        session.parse(frames[0])
    assert stale.value.code == "stale" and not session._seen


def test_lone_surrogates_and_unbounded_dates_are_refused_not_raised() -> None:
    session = Session(b"k")
    base = {"msg_id": "1", "type": "status", "session": "s", "version": 1, "date": time.time()}
    cases = {"invalid-json": {**base, "msg_id": "\udc80"}, "bad-message": {**base, "date": 10**400}}
    for code, header in cases.items():
        with pytest.raises(ProtocolError) as refused:
            session.parse(_signed(session, header))
        assert refused.value.code == code
    paired = session.parse(_signed(session, {**base, "msg_id": "\ud83d\ude00"}))  # an escaped pair is fine
    assert paired.msg_id == "\U0001f600"


def test_only_loopback_endpoints_count_as_loopback() -> None:
    local = ("tcp://127.0.0.1:5555", "tcp://127.9.9.9:*", "tcp://localhost:1", "tcp://[::1]:7", "ipc:///tmp/a")
    remote = (
        "tcp://127.0.0.1:1;0.0.0.0:5555",  # ZeroMQ binds every endpoint of a `;` list
        "tcp://0.0.0.0:5555",
        "tcp://*:5555",
        "tcp://eth0:5555",
        "tcp://127.evil.example:5555",
        "tcp://[::]:5555",
        "tcp://10.0.0.1:5555",
        "udp://127.0.0.1:5555",
    )
    assert all(is_loopback(a) for a in local) and not any(is_loopback(a) for a in remote)


def test_a_planted_temporary_file_never_becomes_the_connection_file(tmp_path: Path) -> None:
    folder = tmp_path / "conn"
    folder.mkdir(mode=0o700)
    path = folder / "daemon.json"
    planted = folder / f".daemon.json.{os.getpid()}.tmp"  # the name a writer using its pid would pick
    planted.write_text("planted")
    planted.chmod(0o666)
    ConnectionInfo.new("tcp://127.0.0.1:5555").write(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and planted.read_text() == "planted"


def test_a_folder_other_users_can_write_is_refused_for_the_key(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(BridgeError, match="can be written by other users") as refused:
        ConnectionInfo.new("tcp://127.0.0.1:5555").write(shared / "daemon.json")
    assert "ANTONI_BRIDGE_CONNECTION_FILE" in refused.value.hint and not list(shared.iterdir())
