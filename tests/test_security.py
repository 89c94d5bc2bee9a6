"""What a hostile local client can reach: a real `antoni-bridge serve --demo` process over loopback sockets."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket as socket_module
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from antoni_bridge.client import Client, DaemonUnreachable
from antoni_bridge.daemon import logs
from antoni_bridge.daemon.protocol import TAG, ConnectionInfo, Message, Session
from antoni_bridge.errors import BridgeError
from antoni_bridge.platforms import pid_alive
from tests.conftest import run_cli


class Raw:
    """A DEALER that sends whatever frames a test makes, signed with the daemon's key or not."""

    def __init__(self, connection: Path) -> None:
        info = ConnectionInfo.read(connection)
        self.session = Session(info.key_bytes)
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.linger, self.socket.rcvtimeo, self.socket.sndtimeo = 0, 10_000, 10_000
        self.socket.connect(info.address)

    def signed(self, header: dict, content: dict | None = None) -> list[bytes]:
        head = json.dumps(header).encode()
        body = json.dumps(content or {}).encode()
        return [TAG, self.session.sign(head, body), head, body]

    def reply(self, frames: list[bytes]) -> Message:
        self.socket.send_multipart(frames)
        return self.session.parse(self.socket.recv_multipart())

    def close(self) -> None:
        self.socket.close()
        self.context.term()


@pytest.fixture
def raw(daemon: Path) -> Iterator[Raw]:
    client = Raw(daemon)
    yield client
    client.close()


def _header(**changes: object) -> dict:
    return {
        "msg_id": "m-" + str(time.monotonic_ns()),
        "type": "status",
        "session": "s",
        "date": time.time(),
        "version": 1,
    } | changes


def _still_serving(daemon: Path) -> None:
    with Client(daemon, timeout_s=30) as client:
        assert client.request("hello").content["protocol"] == 1


def test_lone_surrogates_and_huge_dates_in_the_header_get_error_replies(daemon: Path, raw: Raw) -> None:
    for header in (
        _header(msg_id="\udc80"),
        _header(session="\udc80x"),
        _header(type="\ud800"),
        _header(date=10**29),
        _header(date=10**400),
    ):
        frames = raw.signed(header)
        reply = raw.reply(frames)
        assert reply.type == "error" and reply.content["code"] in ("invalid-json", "bad-message", "stale"), reply
    _still_serving(daemon)


def test_wire_refusals_carry_the_refused_messages_id(daemon: Path, raw: Raw) -> None:
    wrong = Session(b"not-the-key")
    header = _header(msg_id="mine-1")
    cases = {
        "bad-signature": wrong.frames(Message("status", {}, "mine-1", "s", None, time.time())),
        "bad-version": raw.signed(_header(msg_id="mine-1", version=2)),
        "bad-message": raw.signed(_header(msg_id="mine-1", date="today")),
        "invalid-json": [TAG, raw.session.sign(json.dumps(header).encode(), b"{"), json.dumps(header).encode(), b"{"],
        "bad-frames": [TAG, b"sig", json.dumps(header).encode()],
        "stale": raw.signed(_header(msg_id="mine-1", date=time.time() - 3600)),
        "too-large": [TAG, b"sig", json.dumps(header).encode(), b" " * (32 * 2**20 + 1)],
    }
    for code, frames in cases.items():
        reply = raw.reply(frames)
        assert (reply.content["code"], reply.parent_id) == (code, "mine-1")
    accepted = raw.signed(_header(msg_id="mine-1"))
    assert raw.reply(accepted).type == "status"
    replayed = raw.reply(accepted)
    assert (replayed.content["code"], replayed.parent_id) == ("replayed", "mine-1")
    unreadable = raw.reply([b"hello"])  # no header to read an id from: no parent_id
    assert unreadable.content["code"] == "bad-frames" and unreadable.parent_id is None


def test_an_address_list_with_a_public_endpoint_is_refused_by_name(tmp_path: Path) -> None:
    with socket_module.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"tcp://127.0.0.1:{port};0.0.0.0:{port + 1}"
    env = {"ANTONI_BRIDGE_CONNECTION_FILE": str(tmp_path / "d.json")}
    result = run_cli("serve", "--demo", "--address", address, env=env, timeout=120)
    assert result.returncode != 0 and "is not a loopback address" in result.stderr and "--allow-remote" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "d.json").exists()


@pytest.mark.skipif(os.name == "nt", reason="Windows: another process can only end it (docs/platforms.md)")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_daemon_as_shutdown_does(tmp_path: Path, signum: int) -> None:
    from antoni_bridge.daemon.launch import start_daemon
    from tests.test_daemon import ASK, _seeded_latents

    connection = tmp_path / "own.json"
    # this client sends no heartbeats: a long client timeout keeps its jobs alive until the signal
    process = start_daemon(["--demo", "--address", "tcp://127.0.0.1:*", "--client-timeout", "120"], connection)
    try:
        long = {**ASK, "features": str(_seeded_latents(tmp_path / "l.pt")), "options": {"max_new_tokens": 1500}}
        with Client(connection, timeout_s=30) as asker:
            sent = {asker.send("ask", long).msg_id for _ in range(2)}  # one runs, one waits
            ends: dict[str, Message] = {}
            signalled = False
            while len(ends) < 2:
                assert asker.socket.poll(20_000), f"no terminal message for {sent - ends.keys()}"
                message = asker.session.parse(asker.socket.recv_multipart())
                if message.type == "token" and not signalled:
                    os.kill(process.pid, signum)
                    signalled = True
                if message.type in ("done", "cancelled", "error"):
                    ends[message.parent_id] = message
        assert ends.keys() == sent and {m.type for m in ends.values()} == {"cancelled"}
        assert {m.content["reason"] for m in ends.values()} == {"shutdown"}
        assert process.wait(timeout=60) == 0 and not connection.exists()  # the interpreter's exit takes seconds
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_connection_file_left_by_a_dead_daemon_reads_as_not_running(tmp_path: Path) -> None:
    connection = tmp_path / "daemon.json"
    dead = ConnectionInfo("tcp://127.0.0.1:9", "00" * 32, _dead_pid())
    dead.write(connection)
    assert not pid_alive(dead.pid) and pid_alive(os.getpid()) and not pid_alive(2**40)
    with pytest.raises(BridgeError, match="has ended: the daemon is not running"):
        Client(connection)
    result = run_cli("status", env={"ANTONI_BRIDGE_CONNECTION_FILE": str(connection)}, timeout=60)
    assert result.returncode != 0 and "the daemon is not running" in result.stderr and "Traceback" not in result.stderr


def test_the_client_gives_up_sending_to_a_daemon_that_takes_nothing(tmp_path: Path) -> None:
    """A DEALER with no peer queues up to its high-water mark, then would block for ever."""
    with socket_module.socket() as listener:  # a port that accepts TCP but speaks no ZeroMQ
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        connection = tmp_path / "daemon.json"
        ConnectionInfo(f"tcp://127.0.0.1:{listener.getsockname()[1]}", "00" * 32, os.getpid()).write(connection)
        with Client(connection, timeout_s=1) as client:
            start = time.monotonic()
            with pytest.raises(DaemonUnreachable, match="takes no messages"):
                for _ in range(5000):
                    client.send("heartbeat", {})
            assert time.monotonic() - start < 10


@pytest.fixture
def not_files(tmp_path: Path) -> dict[str, Path]:
    """A named pipe (reading it blocks until a writer comes) and a symbolic link that points at itself."""
    fifo, loop = tmp_path / "pipe.svs", tmp_path / "loop.svs"
    os.mkfifo(fifo)
    loop.symlink_to(loop)
    return {"named pipe": fifo, "symbolic link that loops": loop}


def test_the_cli_refuses_pipes_and_link_loops_by_name(not_files: dict[str, Path], tmp_path: Path) -> None:
    for kind, path in not_files.items():
        result = run_cli("tiles", str(path), "--out", str(tmp_path / "t.h5"), timeout=60)
        assert result.returncode == 2 and kind in result.stderr and "Traceback" not in result.stderr


def test_the_daemon_refuses_pipes_and_link_loops_and_keeps_working(daemon: Path, not_files: dict[str, Path]) -> None:
    from tests.test_daemon import ASK

    with Client(daemon, timeout_s=30) as client:
        for kind, path in not_files.items():
            events = list(client.events("ask", {**ASK, "slide": str(path)}, idle_timeout_s=30))
            assert events[-1].type == "error" and kind in events[-1].content["message"], events[-1].content
            assert events[-1].content["code"] in ("bad-request", "bad-input")
    _still_serving(daemon)


def test_temporaries_of_dead_writers_are_swept_at_start_and_live_ones_kept(tmp_path: Path) -> None:
    from antoni_bridge.features.cache import FeatureCache

    (tmp_path / "partial" / "key").mkdir(parents=True)
    dead, alive = _dead_pid(), os.getpid()
    left = [tmp_path / f".k.h5.{dead}.tmp", tmp_path / "partial" / "key" / f".000000064.{dead}.tmp.npy"]
    kept = [tmp_path / f".k2.h5.{alive}.tmp", tmp_path / "partial" / "key" / f".000000128.{alive}.tmp.npy"]
    for path in left + kept:
        path.write_bytes(b"x" * 1024)
    FeatureCache(tmp_path)
    assert [p.exists() for p in left + kept] == [False, False, True, True]


@pytest.mark.skipif(os.name == "nt", reason="mode bits; Windows' access lists: tests/test_platforms.py")
def test_the_daemons_log_and_cache_files_are_the_users_alone(daemon: Path, demo_20x: Path) -> None:
    with Client(daemon, timeout_s=30) as client:
        events = list(client.events("embed", {"slide": str(demo_20x)}))
    assert events[-1].type == "done", events[-1].content
    home = daemon.parent
    written = [p for folder in ("logs", "features") for p in (home / folder).rglob("*")]
    assert any(p.suffix == ".h5" for p in written) and any(p.name == "daemon.log" for p in written)
    shared = {str(p): oct(p.stat().st_mode & 0o777) for p in [*written, daemon] if p.stat().st_mode & 0o077}
    assert not shared


def test_a_flood_of_unsigned_messages_leaves_the_start_up_lines_in_a_small_log(daemon: Path, raw: Raw) -> None:
    log = daemon.parent / "logs" / "daemon.log"
    before = log.stat().st_size
    wrong = Session(b"not-the-key")
    for _ in range(20_000):
        raw.socket.send_multipart(wrong.frames(wrong.message("status", {})))
    raw.reply(raw.signed(_header()))  # answered after every refusal: all of them were logged or held back
    text = log.read_text()
    assert "listening on" in text and len(text) - before < 20_000, len(text) - before
    assert text[before:].count("signature does not match") <= logs.REFUSALS_PER_WINDOW


def test_huge_texts_are_cut_in_the_log_and_in_replies(daemon: Path, raw: Raw) -> None:
    from tests.test_daemon import ASK

    huge = "/no/such/" + "a" * 3_000_000
    with Client(daemon, timeout_s=30) as client:
        events = list(client.events("ask", {**ASK, "slide": huge}, idle_timeout_s=30))
    assert events[-1].type == "error" and len(events[-1].content["message"]) < 2000
    unknown = raw.reply(raw.signed(_header(type="x" * 1_000_000)))
    assert unknown.content["code"] == "unknown-type" and len(unknown.content["message"]) < 2000
    lines = (daemon.parent / "logs" / "daemon.log").read_text().splitlines()
    assert max(len(line) for line in lines) < 3000


def test_refusals_past_the_rate_are_held_back_and_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "REFUSAL_WINDOW_S", 0.2)
    bounded, logger = logs.Bounded(), logging.getLogger("test-bounded")
    records = [
        logger.makeRecord("t", logging.WARNING, "f", 1, "refused %d", (i,), None, extra=logs.REFUSAL) for i in range(50)
    ]
    passed = [bounded.filter(r) for r in records]
    assert passed.count(True) == logs.REFUSALS_PER_WINDOW
    time.sleep(0.3)
    late = logger.makeRecord("t", logging.WARNING, "f", 1, "refused late", (), None, extra=logs.REFUSAL)
    assert bounded.filter(late) and "30 more refusals were not logged" in late.getMessage()
    error = logger.makeRecord("t", logging.ERROR, "f", 1, "x" * 10_000, (), None)
    assert bounded.filter(error) and len(error.getMessage()) < logs.MAX_RECORD_CHARS + 100


def _rss_mib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1]) // 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the daemon's RSS from /proc")
def test_big_messages_and_many_connections_leave_memory_where_it_was(daemon: Path, raw: Raw) -> None:
    pid = ConnectionInfo.read(daemon).pid
    _still_serving(daemon)
    before = _rss_mib(pid)
    context = zmq.Context()
    senders = [context.socket(zmq.DEALER) for _ in range(4)]
    try:
        for sender in senders:
            sender.linger, sender.rcvtimeo = 0, 60_000
            sender.connect(ConnectionInfo.read(daemon).address)
        for mib in (10, 20, 30, 33):  # the last ones are past the limit: refused as too-large
            for sender in senders:
                head = json.dumps(_header()).encode()
                body = b'{"p":"' + b"a" * (mib * 2**20 - 100) + b'"}'
                sender.send_multipart([TAG, raw.session.sign(head, body), head, body], copy=False)
        for sender in senders:
            for _ in range(4):
                sender.recv_multipart()
        for _ in range(10):  # 1000 connections, 100 open at a time (each holds a file descriptor)
            batch = zmq.Context()
            for _ in range(100):
                once = batch.socket(zmq.DEALER)
                once.linger = 0
                once.connect(ConnectionInfo.read(daemon).address)
                once.send_multipart(raw.session.frames(raw.session.message("heartbeat", {})))
                once.close()
            batch.term()
        _still_serving(daemon)
        time.sleep(2)
        assert _rss_mib(pid) - before < 150, (before, _rss_mib(pid))
    finally:
        for sender in senders:
            sender.close()
        context.term()


def test_the_table_of_clients_keeps_only_recent_ones_and_those_with_jobs(tmp_path: Path) -> None:
    from antoni_bridge.daemon.jobs import Job
    from antoni_bridge.daemon.server import Daemon

    server = Daemon("tcp://127.0.0.1:*", None, tmp_path / "d.json", client_dead_s=1.0)  # runtime: unused here
    long_ago = time.monotonic() - 60
    server.last_seen = {i.to_bytes(4, "big"): long_ago for i in range(10_000)}
    server.jobs.submit(Job("ask", b"\x00\x00\x00\x07", "m", {}))
    server.last_seen[b"recent"] = time.monotonic()
    server.last_pruned = long_ago
    server._forget_silent_clients()
    assert set(server.last_seen) == {b"\x00\x00\x00\x07", b"recent"}
