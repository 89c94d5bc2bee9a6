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
from antoni_bridge.daemon.protocol import TAG, ConnectionInfo, Message, Session
from antoni_bridge.errors import BridgeError
from antoni_bridge.slides.demo import DemoLayout
from tests.conftest import run_cli

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
            started = False
            while len(ends) < 2:
                assert asker.socket.poll(20_000), f"no terminal message for {sent - ends.keys()}"
                message = asker.session.parse(asker.socket.recv_multipart())
                if message.type == "token" and not started:
                    started = True
                    with _client(connection) as stopper:
                        stopper.request("shutdown")
                if message.type in ("done", "cancelled", "error"):
                    ends[message.parent_id] = message
        assert ends.keys() == sent and {m.type for m in ends.values()} == {"cancelled"}
        assert [m.content.get("reason") for m in ends.values()].count("shutdown") == 1  # the one still waiting
        assert process.wait(timeout=30) == 0 and not connection.exists()
    finally:
        if process.poll() is None:
            process.kill()
