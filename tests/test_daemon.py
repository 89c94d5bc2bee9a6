"""The daemon as users run it: a real `antoni-bridge serve --demo` process, real sockets, the real client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import zmq

from antoni_bridge.client import Client
from antoni_bridge.daemon.protocol import TAG, ConnectionInfo, Session
from antoni_bridge.errors import BridgeError
from antoni_bridge.slides.demo import DemoLayout

ASK = {"conversation": [{"role": "user", "content": "What organ is this?"}], "options": {"max_new_tokens": 6}}


def _client(daemon: Path) -> Client:
    return Client(daemon, timeout_s=30)


def test_hello_and_status(daemon: Path) -> None:
    with _client(daemon) as client:
        hello = client.request("hello").content
        assert hello["protocol"] == 1 and hello["demo"] is True
        status = client.request("status").content
        assert status["queue"]["waiting"] == [] and status["gpu"] is None


def test_ask_a_features_file_streams_tokens_and_ends_once(daemon: Path, tmp_path: Path) -> None:
    latents = tmp_path / "latents.pt"
    torch.save(torch.randn(513, 64), latents)
    with _client(daemon) as client:
        events = list(client.events("ask", {**ASK, "features": str(latents)}))
    kinds = [e.type for e in events]
    assert kinds[0] == "accepted" and kinds[-1] == "done" and kinds.count("done") == 1
    done = events[-1].content
    assert done["demo"] is True and len(done["token_ids"]) <= 6
    assert "".join(e.content["text"] for e in events if e.type == "token") == done["answer"]


def test_ask_a_region_reports_stages_and_the_repeat_hits_the_cache(
    daemon: Path, demo_40x: tuple[Path, DemoLayout]
) -> None:
    region = {
        "type": "Polygon",
        "coordinates": [[[1500, 1500], [4000, 1500], [4000, 4000], [1500, 4000], [1500, 1500]]],
    }
    ask = {**ASK, "slide": str(demo_40x[0]), "region": region}
    with _client(daemon) as client:
        first = list(client.events("ask", ask))
        again = list(client.events("ask", ask))
    stages = {e.content["stage"] for e in first if e.type == "progress"}
    assert {"tissue", "tile-embedding", "slide-encoding", "generating"} <= stages
    assert first[-1].content["cache_hit"] is False and again[-1].content["cache_hit"] is True


def test_cancel_during_generation_ends_the_job_and_frees_the_worker(daemon: Path, tmp_path: Path) -> None:
    latents = tmp_path / "latents.pt"
    torch.save(torch.randn(513, 64, generator=torch.Generator().manual_seed(7)), latents)  # a long answer
    long = {**ASK, "features": str(latents), "options": {"max_new_tokens": 1500, "greedy": True}}
    with _client(daemon) as client, _client(daemon) as controller:
        events = client.events("ask", long)
        job_id = next(events).content["job_id"]
        next(e for e in events if e.type == "token")
        start = time.monotonic()
        controller.request("cancel", {"job_id": job_id})
        last = list(events)[-1]
        assert last.type == "cancelled" and time.monotonic() - start < 1.0
        assert client.request("status").content["queue"]["running"] is None


CLIENT_THAT_DIES = """
import sys, time
from pathlib import Path
from antoni_bridge.client import Client
client = Client(Path(sys.argv[1]), timeout_s=30)
events = client.events("ask", {"slide": sys.argv[2], "conversation": [{"role": "user", "content": "Q"}],
                               "options": {"max_new_tokens": 1700, "greedy": True}})
print(next(events).content["job_id"], flush=True)
time.sleep(600)
"""


def test_a_client_killed_mid_job_has_its_job_cancelled(daemon: Path, demo_odd_pyramid: Path) -> None:
    """A slide no other test embeds here, and a long answer: seconds of work the dead client never reads."""
    child = subprocess.Popen(
        [sys.executable, "-c", CLIENT_THAT_DIES, str(daemon), str(demo_odd_pyramid)], stdout=subprocess.PIPE, text=True
    )
    job_id = child.stdout.readline().strip()
    child.kill()
    child.wait()
    with _client(daemon) as client:
        deadline = time.monotonic() + 20
        while not any(r["job_id"] == job_id for r in client.request("status").content["queue"]["recent"]):
            assert time.monotonic() < deadline, "the dead client's job kept running"
            time.sleep(0.1)
        ended = next(r for r in client.request("status").content["queue"]["recent"] if r["job_id"] == job_id)
    assert ended["end"] == "cancelled", "without heartbeats the job would have run to its end"


def test_a_long_stream_of_events_is_not_mistaken_for_a_dead_client(daemon: Path, tmp_path: Path) -> None:
    latents = tmp_path / "latents.pt"
    torch.save(torch.randn(513, 64, generator=torch.Generator().manual_seed(7)), latents)  # runs to its limit
    long = {**ASK, "features": str(latents), "options": {"max_new_tokens": 1700, "greedy": True}}
    start = time.monotonic()
    with _client(daemon) as client:
        last = list(client.events("ask", long))[-1]
    assert last.type == "done" and last.content["stop_reason"] == "length", last.content
    assert time.monotonic() - start > 1.0, "the job outlasted the daemon's client timeout"


def test_bad_messages_get_error_replies_and_the_daemon_keeps_serving(daemon: Path) -> None:
    info = ConnectionInfo.read(daemon)
    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.linger, socket.rcvtimeo = 0, 10_000
    socket.connect(info.address)
    right, wrong = Session(info.key_bytes), Session(b"not-the-key")
    header = json.dumps({"msg_id": "x", "type": "ask", "session": "s", "date": 1.0, "version": 1}).encode()
    cases = {
        "bad-frames": [b"hello"],
        "bad-signature": wrong.frames(wrong.message("status", {})),
        "invalid-json": [TAG, right.sign(header, b"{"), header, b"{"],
        "unknown-type": right.frames(right.message("launch-missiles", {})),
        "bad-request": right.frames(right.message("ask", {"features": "x.pt"})),
        "bad-request ": right.frames(right.message("ask", {**ASK, "features": "x.pt", "options": {"top_k": "64"}})),
    }
    replayed = right.frames(right.message("status", {}))
    try:
        for code, frames in cases.items():
            socket.send_multipart(frames)
            reply = right.parse(socket.recv_multipart())
            assert reply.type == "error" and reply.content["code"] == code.strip(), (code, reply.content)
        socket.send_multipart(replayed)
        right.parse(socket.recv_multipart())
        socket.send_multipart(replayed)
        assert right.parse(socket.recv_multipart()).content["code"] == "replayed"
    finally:
        socket.close()
        context.term()
    with _client(daemon) as client:
        assert client.request("hello").content["protocol"] == 1


def test_a_missing_slide_is_an_error_event(daemon: Path, tmp_path: Path) -> None:
    with _client(daemon) as client:
        last = list(client.events("ask", {**ASK, "slide": str(tmp_path / "nowhere.svs")}))[-1]
    assert last.type == "error" and "No slide at" in last.content["message"] and last.content["hint"]


def test_a_daemon_that_dies_mid_job_is_noticed_at_once(tmp_path: Path) -> None:
    connection = tmp_path / "daemon.json"
    env = {**os.environ, "ANTONI_BRIDGE_HOME": str(tmp_path), "ANTONI_BRIDGE_CONNECTION_FILE": str(connection)}
    process = subprocess.Popen(
        [sys.executable, "-m", "antoni_bridge.cli", "serve", "--demo", "--address", "tcp://127.0.0.1:*"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not connection.exists():
            assert process.poll() is None and time.monotonic() < deadline, "the daemon did not start"
            time.sleep(0.1)
        latents = tmp_path / "latents.pt"
        torch.save(torch.randn(513, 64, generator=torch.Generator().manual_seed(7)), latents)
        with _client(connection) as client:
            events = client.events("ask", {**ASK, "features": str(latents)})
            next(events)  # accepted
            process.kill()
            process.wait()  # reaped, as a daemon started from a shell is (a zombie would still look alive)
            start = time.monotonic()
            with pytest.raises(BridgeError, match="daemon stopped before answering"):
                list(events)
            assert time.monotonic() - start < 3
    finally:
        process.kill()
        process.wait()


def test_no_daemon_is_one_clear_sentence(tmp_path: Path) -> None:
    with pytest.raises(BridgeError, match="the daemon is not running"):
        Client(tmp_path / "none.json")


def test_stop_ends_the_process_and_removes_the_connection_file(daemon: Path) -> None:
    with _client(daemon) as client:
        client.request("shutdown")
    deadline = time.monotonic() + 10
    while daemon.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not daemon.exists()
