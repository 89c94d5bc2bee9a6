"""The daemon as users run it: a real `antoni-bridge serve --demo` process, real sockets, the real client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zmq

from antoni_bridge.client import Client
from antoni_bridge.daemon.protocol import TAG, ConnectionInfo, Message, Session
from antoni_bridge.errors import BridgeError
from antoni_bridge.slides.demo import DemoLayout
from tests.conftest import run_cli

ASK = {"conversation": [{"role": "user", "content": "What organ is this?"}], "options": {"max_new_tokens": 6}}


@pytest.fixture(scope="module")
def daemon(untrained_daemon: Path) -> Path:
    """`serve --demo` on untrained weights: cancelling, long streams and queues need answers that run long."""
    return untrained_daemon


def _client(daemon: Path) -> Client:
    return Client(daemon, timeout_s=30)


def test_hello_and_status(daemon: Path) -> None:
    with _client(daemon) as client:
        hello = client.request("hello").content
        assert hello["protocol"] == 1 and hello["demo"] is True
        assert hello["decoding"]["greedy"] is True and hello["decoding"]["max_new_tokens"] == 1024
        assert hello["provenance"]["demo"] is True and hello["provenance"]["antoni_bridge"]
        status = client.request("status").content
        assert status["queue"]["waiting"] == [] and status["gpu"] is None
        assert status["device"] == "cpu" and status["provenance"]["weights"] == hello["provenance"]["weights"]


def test_status_in_plain_words_and_as_json(daemon: Path) -> None:
    env = {"ANTONI_BRIDGE_CONNECTION_FILE": str(daemon)}
    words = run_cli("status", env=env)
    assert words.returncode == 0, words.stderr
    assert "device: cpu" in words.stdout and "GPU memory: no GPU" in words.stdout and "queue: " in words.stdout
    assert "[demo: random weights]" in words.stdout and "{" not in words.stdout
    as_json = json.loads(run_cli("status", "--json", env=env).stdout)
    assert as_json["device"] == "cpu" and as_json["provenance"]["demo"] is True


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
    provenance = done["provenance"]
    assert provenance["decoding"]["max_new_tokens"] == 6 and provenance["decoding"]["greedy"] is True  # the defaults
    assert len(provenance["weights_sha256"]) == 64 and provenance["stop_reason"] in ("stop", "length")
    log = (daemon.parent / "logs" / "daemon.log").read_text()
    assert f"job {done['job_id']}: done (weights " in log and f"sha256 {provenance['weights_sha256'][:12]}" in log


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
        "bad-request  ": right.frames(right.message("load", {"models": [["encoders"]]})),
        "bad-request   ": right.frames(right.message("ask", {**ASK, "features": "x.pt", "options": {"top_k": 6.5}})),
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
    log = (daemon.parent / "logs" / "daemon.log").read_text()
    assert "refused a message" in log and "signature does not match" in log


def test_ask_follow_up_and_choices_from_the_command_line(daemon: Path, demo_40x: tuple[Path, DemoLayout]) -> None:
    env = {"ANTONI_BRIDGE_CONNECTION_FILE": str(daemon)}
    slide, region = str(demo_40x[0]), ["--region", "1500,1500,2500,2500"]
    first = run_cli("ask", slide, "What organ?", *region, "--max-new-tokens", "5", "--json", env=env)
    assert first.returncode == 0, first.stderr
    again = run_cli("ask", slide, "And the grade?", *region, "--follow-up", "--max-new-tokens", "5", "--json", env=env)
    assert again.returncode == 0, again.stderr
    first_done, again_done = json.loads(first.stdout), json.loads(again.stdout)
    assert again_done["latents_from"] == "memory"
    assert again_done["timings"]["reused_tokens"] > 0  # the first question and answer were not fed again
    choices = run_cli("ask", slide, "Organ?", *region, "--choices", "A=lung,B=skin", "--json", env=env)
    assert choices.returncode == 0, choices.stderr
    assert json.loads(choices.stdout)["best"] in ("A", "B") and first_done["demo"] is True


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


def _seeded_latents(path: Path) -> Path:
    """Latents whose demo answer runs to any length limit (random ones may stop at once)."""
    torch.save(torch.randn(513, 64, generator=torch.Generator().manual_seed(7)), path)
    return path


def _done(client: Client, type_: str, content: dict) -> dict:
    events = list(client.events(type_, content))
    assert [e.type for e in events].count("accepted") == 1 and events[-1].type == "done", events[-1].content
    return events[-1].content


def test_embed_then_ask_reads_the_latents_from_memory_and_forget_drops_them(daemon: Path, demo_20x: Path) -> None:
    slide = str(demo_20x)
    with _client(daemon) as client:
        embedded = _done(client, "embed", {"slide": slide})
        assert embedded["latents_from"] in ("computed", "disk") and embedded["tiles"] > 10
        asked = _done(client, "ask", {**ASK, "slide": slide})
        assert asked["latents_from"] == "memory" and asked["latents_shape"] == [513, 64]
        before = client.request("status").content["cache"]
        removed = _done(client, "forget", {"slide": slide})["removed"]
        assert removed == {"memory": 1, "disk": 1}
        after = client.request("status").content["cache"]
        assert after["memory_entries"] == before["memory_entries"] - 1
        assert after["disk_entries"] == before["disk_entries"] - 1
        assert _done(client, "embed", {"slide": slide})["latents_from"] == "computed"


def test_score_ranks_choices_through_the_daemon(daemon: Path, tmp_path: Path) -> None:
    content = {"features": str(_seeded_latents(tmp_path / "l.pt")), "question": "Organ?", "choices": ["lung", "skin"]}
    with _client(daemon) as client:
        done = _done(client, "score", content)
    assert done["choices"] == ["lung", "skin"] and len(done["mean_nll"]) == 2
    assert done["best"] == ["lung", "skin"][done["mean_nll"].index(min(done["mean_nll"]))]


def test_view_answers_about_a_slide_region_and_an_uploaded_image(daemon: Path, demo_20x: Path, tmp_path: Path) -> None:
    import base64
    import io

    from PIL import Image

    region = {"type": "Polygon", "coordinates": [[[100, 100], [900, 100], [900, 500], [100, 500], [100, 100]]]}
    png = io.BytesIO()
    Image.new("RGB", (300, 200), (200, 120, 160)).save(png, format="PNG")
    with _client(daemon) as client:
        from_slide = _done(client, "view", {**ASK, "slide": str(demo_20x), "region": region})
        uploaded = _done(client, "view", {**ASK, "image": base64.b64encode(png.getvalue()).decode()})
        broken = list(client.events("view", {**ASK, "image": base64.b64encode(b"not a picture").decode()}))[-1]
    assert from_slide["image_size"] == [896, 896] and uploaded["image_size"] == [200, 300]
    assert broken.type == "error" and "cannot be decoded" in broken.content["message"]


def test_unload_and_load_change_what_hello_reports(daemon: Path) -> None:
    with _client(daemon) as client:
        assert _done(client, "unload", {"models": ["model"]})["loaded"] in ([], ["encoders"])
        assert "model" not in client.request("hello").content["loaded"]
        assert _done(client, "load", {})["loaded"] == ["encoders", "model"]
        assert client.request("status").content["loaded"] == ["encoders", "model"]


def test_twenty_clients_asking_at_once_each_get_one_answer(daemon: Path, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    latents = str(_seeded_latents(tmp_path / "l.pt"))

    def ask(i: int) -> list[str]:
        """As a front end does: a `busy` queue (16 places for 20 clients) is asked again a moment later."""
        with _client(daemon) as client:
            content = {**ASK, "features": latents, "options": {"max_new_tokens": 3, "seed": i}}
            while (kinds := [e.type for e in client.events("ask", content)]) == ["busy"]:
                time.sleep(0.2)
            return kinds

    with ThreadPoolExecutor(20) as pool:
        runs = list(pool.map(ask, range(20)))
    wrong = [r for r in runs if r[0] != "accepted" or r[-1] != "done" or r.count("done") != 1]
    assert not wrong, wrong


def test_a_full_queue_answers_busy(daemon: Path, tmp_path: Path) -> None:
    long = {**ASK, "features": str(_seeded_latents(tmp_path / "l.pt")), "options": {"max_new_tokens": 1500}}
    with _client(daemon) as client:
        capacity = client.request("status").content["queue"]["capacity"]
        sent = [client.send("ask", long) for _ in range(capacity + 3)]  # one runs, `capacity` wait, the rest...
        replies = {}
        while len(replies) < len(sent):
            message = client.session.parse(client.socket.recv_multipart())
            if message.type in ("accepted", "busy"):
                replies[message.parent_id] = message
        busy = [m for m in replies.values() if m.type == "busy"]
        assert len(busy) >= 2 and busy[0].content["capacity"] == capacity
        for accepted in (m for m in replies.values() if m.type == "accepted"):
            client.request("cancel", {"job_id": accepted.content["job_id"]})


def test_an_oversize_message_is_refused_and_the_daemon_keeps_serving(daemon: Path) -> None:
    from antoni_bridge.daemon.protocol import MAX_MESSAGE_BYTES

    with _client(daemon) as client:
        client.send("ask", {**ASK, "features": "x" * (MAX_MESSAGE_BYTES + 1)})
        reply = client.session.parse(client.socket.recv_multipart())
        assert reply.type == "error" and reply.content["code"] == "too-large"
        assert client.request("status").content["queue"]["running"] is None


def test_the_client_reconnects_to_a_restarted_daemon(daemon: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from antoni_bridge.daemon.launch import start_daemon

    monkeypatch.setenv("ANTONI_BRIDGE_HOME", str(daemon.parent))  # the module daemon's home: demo weights exist
    connection = daemon.parent / "restarting.json"
    first = start_daemon(["--demo", "--address", "tcp://127.0.0.1:*"], connection)
    try:
        with _client(connection) as client:
            assert client.request("hello").content["protocol"] == 1
            client.request("shutdown")
            first.wait(30)
            second = start_daemon(["--demo", "--address", "tcp://127.0.0.1:*"], connection)
            try:
                assert client.request("status").content["queue"]["running"] is None
                assert client.info.pid == second.pid  # the new key and port were picked up
            finally:
                second.kill()
                second.wait()
    finally:
        first.kill()
        first.wait()


def test_a_remote_daemon_needs_curve_and_keeps_to_its_slide_roots(
    daemon: Path, tmp_path: Path, demo_20x: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from antoni_bridge.daemon.launch import start_daemon

    refused = run_cli("serve", "--demo", "--address", "tcp://0.0.0.0:5999")
    assert refused.returncode == 2 and "not a loopback address" in refused.stderr and "--allow-remote" in refused.stderr
    monkeypatch.setenv("ANTONI_BRIDGE_HOME", str(daemon.parent))
    connection = tmp_path / "remote.json"
    args = ["--demo", "--address", "tcp://127.0.0.1:*", "--allow-remote", "--slide-root", str(tmp_path)]
    process = start_daemon(args, connection)
    try:
        info = ConnectionInfo.read(connection)
        assert info.curve_server_key
        with _client(connection) as client:  # takes the server key from the connection file
            assert client.request("hello").content["protocol"] == 1
            outside = list(client.events("embed", {"slide": str(demo_20x)}))[-1]
            assert outside.type == "error" and "outside the daemon's slide folders" in outside.content["message"]
        context = zmq.Context()
        plain = context.socket(zmq.DEALER)  # no CURVE: the handshake fails and nothing comes back
        plain.linger = 0
        plain.connect(info.address)
        session = Session(info.key_bytes)
        plain.send_multipart(session.frames(session.message("hello", {})))
        assert not plain.poll(1000)
        plain.close()
        context.term()
        second = run_cli(
            "serve", "--demo", "--address", "tcp://127.0.0.1:*", env={"ANTONI_BRIDGE_CONNECTION_FILE": str(connection)}
        )
        assert second.returncode == 2 and "already running" in second.stderr
        with _client(connection) as client:
            client.request("shutdown")
        process.wait(timeout=30)  # the CURVE authenticator is stopped too, or the process would hang here
    finally:
        process.kill()
        process.wait()


class RawClient:
    """A client written from docs/protocol.md alone: it signs what it is told to, escapes text as ASCII
    JSON (so a lone surrogate reaches the daemon), and heartbeats while it waits."""

    def __init__(self, connection: Path) -> None:
        info = ConnectionInfo.read(connection)
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.linger = 0
        self.socket.connect(info.address)
        self.session = Session(info.key_bytes)

    def send(self, type_: str, content: Any, msg_id: str | None = None, signed: bool = True) -> str:
        header = {"msg_id": msg_id or uuid.uuid4().hex, "type": type_, "session": "raw", "date": time.time()}
        head, body = json.dumps({**header, "version": 1}).encode(), json.dumps(content).encode()
        self.socket.send_multipart([TAG, self.session.sign(head, body) if signed else b"0" * 64, head, body])
        return header["msg_id"]

    def replies(self, wait_s: float = 30.0) -> Iterator[Message]:
        """Every reply but heartbeats, until none came for `wait_s`; a heartbeat goes out every 0.25 s."""
        quiet_since, beat = time.monotonic(), 0.0
        while time.monotonic() - quiet_since < wait_s:
            if time.monotonic() - beat >= 0.25:
                self.socket.send_multipart(self.session.frames(self.session.message("heartbeat", {})))
                beat = time.monotonic()
            if self.socket.poll(100):
                message = self.session.parse(self.socket.recv_multipart())
                if message.type != "heartbeat":
                    quiet_since = time.monotonic()
                    yield message

    def until_end(self, msg_id: str, wait_s: float = 30.0) -> list[Message]:
        """The replies to one request, up to its terminal one (or its refusal)."""
        got = []
        for message in self.replies(wait_s):
            if message.parent_id == msg_id:
                got.append(message)
                if message.type in ("done", "error", "cancelled", "busy"):
                    return got
        raise AssertionError(f"no terminal reply to {msg_id}: {[m.type for m in got]}")

    def close(self) -> None:
        self.socket.close()
        self.context.term()


@pytest.fixture
def raw(daemon: Path) -> Iterator[RawClient]:
    client = RawClient(daemon)
    yield client
    client.close()


def _spiral(vertices: int) -> dict:
    """An outline that winds round seven times, crossing itself: the kind that blocked the worker."""
    t = np.linspace(0, 2 * np.pi * 7, vertices)
    r = 1000 + 400 * np.sin(t * 13.7)
    points = np.stack([2000 + r * np.cos(t), 1500 + r * np.sin(t)], axis=1).round(1).tolist()
    return {"type": "Polygon", "coordinates": [[*points, points[0]]]}


def test_what_the_message_shows_wrong_is_refused_at_once_and_the_worker_survives(
    raw: RawClient, demo_20x: Path
) -> None:
    """A lone surrogate in `slide` killed the worker (every later job waited forever); NUL bytes, long
    paths and absurd scales ended as `internal` errors after being accepted."""
    slide, turns = str(demo_20x), ASK["conversation"]
    cases = {
        "surrogate": {**ASK, "slide": "/slides/\udc80.svs"},
        "NUL": {**ASK, "slide": "/slides/a\0b.svs"},
        "long path": {**ASK, "slide": "/" + "a" * 100_000},
        "scale": {**ASK, "slide": slide, "slide_mpp": 1e29},
        "relative": {**ASK, "slide": "slides/a.svs"},
        "ends with an answer": {**ASK, "slide": slide, "conversation": [*turns, {"role": "assistant", "content": "A"}]},
        "no role": {**ASK, "slide": slide, "conversation": [{"content": "Q"}]},
        "endless answer": {**ASK, "slide": slide, "options": {"max_new_tokens": 10**6}},
        "zero temperature": {**ASK, "slide": slide, "options": {"greedy": False, "temperature": 0}},
        "huge region": {"slide": slide, "region": _spiral(200_000)},
    }
    for name, content in cases.items():
        replies = raw.until_end(raw.send("embed" if "region" in content else "ask", content))
        assert [m.type for m in replies] == ["error"], (name, replies[-1].content)
        error = replies[0].content
        expected = "invalid-json" if name == "surrogate" else "bad-request"  # no valid JSON holds a lone surrogate
        assert error["code"] == expected and error["message"].endswith("."), (name, error)
        assert "object has no attribute" not in error["message"] and "Error" not in error["message"], error
    replies = raw.until_end(raw.send("ask", {**ASK, "slide": slide}), wait_s=120)
    assert replies[-1].type == "done", replies[-1].content


def test_a_reused_msg_id_gets_one_job_and_one_refusal(raw: RawClient) -> None:
    """The same msg_id sent on 11 `unload`s drew 11 terminal replies a client could not tell apart."""
    msg_id = uuid.uuid4().hex
    for models in (["model"], ["encoders"], ["model", "encoders"]):  # different content, so not replays
        raw.send("load", {"models": models}, msg_id=msg_id)
    replies = [m for m in raw.replies(wait_s=3) if m.parent_id == msg_id]
    kinds = [m.type for m in replies]
    assert kinds.count("accepted") == 1 and kinds.count("done") == 1 and kinds.count("error") == 2, kinds
    assert all(m.content["code"] == "bad-request" for m in replies if m.type == "error")


def test_cancelled_says_why_waiting_jobs_appear_in_recent_and_positions_count_what_is_ahead(
    daemon: Path, tmp_path: Path
) -> None:
    long = {**ASK, "features": str(_seeded_latents(tmp_path / "l.pt")), "options": {"max_new_tokens": 1500}}
    with _client(daemon) as client:
        for _ in range(5):  # nothing is ahead of a job sent right after the last one's end
            events = list(client.events("load", {}))
            assert events[0].content["position"] == 0 and events[-1].type == "done"
        first, second = client.send("ask", long), client.send("ask", long)
        ends: dict[str, Message] = {}
        accepted: dict[str, Message] = {}
        for message in iter(lambda: client.session.parse(client.socket.recv_multipart()), None):
            if message.type == "accepted":
                accepted[message.parent_id] = message
                if len(accepted) == 2:
                    client.send("cancel", {"job_id": accepted[second.msg_id].content["job_id"]})
                    client.send("cancel", {"job_id": accepted[first.msg_id].content["job_id"]})
            if message.type in ("done", "error", "cancelled"):
                ends[message.parent_id] = message
                if len(ends) == 2:
                    break
        recent = {r["job_id"]: r["end"] for r in client.request("status").content["queue"]["recent"]}
    assert [accepted[m.msg_id].content["position"] for m in (first, second)] == [0, 1]
    assert {m.type for m in ends.values()} == {"cancelled"}
    assert {m.content["reason"] for m in ends.values()} == {"request"}
    assert recent[accepted[second.msg_id].content["job_id"]] == "cancelled", "the waiting job's end is recorded"


def test_regions_beyond_the_slide_are_clipped_and_say_so(daemon: Path, demo_20x: Path) -> None:
    partly = {
        "type": "Polygon",
        "coordinates": [[[3000, 1000], [9000, 1000], [9000, 2500], [3000, 2500], [3000, 1000]]],
    }
    outside = {"type": "Polygon", "coordinates": [[[5000, 5000], [6000, 5000], [6000, 6000], [5000, 5000]]]}
    with _client(daemon) as client:
        clipped = _done(client, "embed", {"slide": str(demo_20x), "region": partly})
        inside = _done(client, "view", {**ASK, "slide": str(demo_20x), "region": _spiral(80_000)})
        refused = list(client.events("embed", {"slide": str(demo_20x), "region": outside}))[-1]
    assert clipped["region_clipped"] is True and inside["region_clipped"] is False
    assert refused.type == "error" and refused.content["code"] == "bad-input"
    assert "lies outside the slide (4000x3000 px)" in refused.content["message"]


def test_a_tangled_region_is_refused_quickly_and_tissue_detection_stops_on_cancel(
    raw: RawClient, demo_40x: tuple[Path, DemoLayout]
) -> None:
    """500 random points made a region that kept the worker busy for two minutes; finding tissue on a
    large level (48 Mpx here, as a slide given `slide_mpp` 8 reads its full resolution) could not be
    cancelled."""
    points = np.random.default_rng(0).uniform(0, 8000, (500, 2)).tolist()
    tangle = {"type": "Polygon", "coordinates": [[*points, points[0]]]}
    start = time.monotonic()
    replies = raw.until_end(raw.send("embed", {"slide": str(demo_40x[0]), "region": tangle}))
    assert replies[-1].type == "error" and "crosses itself" in replies[-1].content["message"]
    assert time.monotonic() - start < 10
    msg_id = raw.send("embed", {"slide": str(demo_40x[0]), "slide_mpp": 8.0})
    cancel_sent = None
    for message in raw.replies():
        tissue = message.type == "progress" and message.content["stage"] == "tissue" and message.content["done"] >= 1
        if tissue and cancel_sent is None:
            raw.send("cancel", {"job_id": message.content["job_id"]})
            cancel_sent = time.monotonic()
        if message.parent_id == msg_id and message.type in ("done", "error", "cancelled"):
            break
    assert cancel_sent is not None, "no progress while finding tissue"
    assert message.type == "cancelled" and message.content["reason"] == "request"
    assert time.monotonic() - cancel_sent < 2.0


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


def test_shutdown_ends_the_running_and_the_waiting_jobs_with_cancelled(tmp_path: Path) -> None:
    from antoni_bridge.daemon.launch import start_daemon

    connection = tmp_path / "own.json"
    process = start_daemon(["--demo", "--address", "tcp://127.0.0.1:*"], connection)
    try:
        long = {**ASK, "features": str(_seeded_latents(tmp_path / "l.pt")), "options": {"max_new_tokens": 1500}}
        with _client(connection) as asker:
            sent = {asker.send("ask", long).msg_id for _ in range(2)}  # one runs, one waits
            ends: dict[str, Message] = {}
            started, deadline = False, time.monotonic() + 60
            while len(ends) < 2:
                assert time.monotonic() < deadline, f"no terminal message for {sent - ends.keys()}"
                asker.send("heartbeat", {})  # or its jobs end as the jobs of a client gone
                if not asker.socket.poll(250):
                    continue
                message = asker.session.parse(asker.socket.recv_multipart())
                if message.type == "token" and not started:
                    started = True
                    with _client(connection) as stopper:
                        stopper.request("shutdown")
                if message.type in ("done", "cancelled", "error"):
                    ends[message.parent_id] = message
        assert ends.keys() == sent and {m.type for m in ends.values()} == {"cancelled"}
        assert [m.content["reason"] for m in ends.values()] == ["shutdown", "shutdown"]  # running and waiting
        assert process.wait(timeout=30) == 0 and not connection.exists()
    finally:
        if process.poll() is None:
            process.kill()
