"""The daemon over loopback: `status` round trips, 20 concurrent clients, and a cold ask against a
follow-up served from the caches, all against one real `antoni-bridge serve --demo` process.

Target: `status` p50 < 1 ms on loopback.
Usage: python -m benchmarks.daemon [--round-trips 2000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

from antoni_bridge.client import Client
from antoni_bridge.daemon.launch import start_daemon
from antoni_bridge.demo_assets import demo_slide


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--round-trips", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        home = Path(scratch)
        os.environ["ANTONI_BRIDGE_HOME"] = str(home)
        os.environ["ANTONI_BRIDGE_CONNECTION_FILE"] = str(home / "daemon.json")
        slide = demo_slide()
        daemon = start_daemon(["--demo", "--address", "tcp://127.0.0.1:*"], home / "daemon.json")
        try:
            measure(home / "daemon.json", slide, args.round_trips)
            with Client(home / "daemon.json") as client:
                client.request("shutdown")
        finally:
            daemon.wait(timeout=30)


def measure(connection: Path, slide: Path, round_trips: int) -> None:
    with Client(connection) as client:
        client.request("hello")
        times = []
        for _ in range(round_trips):
            start = time.perf_counter()
            client.request("status")
            times.append(time.perf_counter() - start)
    times.sort()
    print(
        f"status round trip over {round_trips}: p50 {statistics.median(times) * 1000:.2f} ms, "
        f"p99 {times[int(0.99 * len(times))] * 1000:.2f} ms"
    )

    per_client, counts = 200, []

    def hammer() -> None:
        with Client(connection) as own:
            for _ in range(per_client):
                own.request("status")
        counts.append(per_client)

    start = time.perf_counter()
    threads = [threading.Thread(target=hammer) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(f"20 clients: {sum(counts) / (time.perf_counter() - start):,.0f} status requests/s in all")

    ask = {
        "slide": str(slide),
        "conversation": [{"role": "user", "content": "What organ is this?"}],
        "options": {"max_new_tokens": 16, "greedy": True},
    }
    busy_times: list[float] = []
    embedding = threading.Event()
    watcher = threading.Thread(target=status_while_embedding, args=(connection, embedding, busy_times))
    watcher.start()
    with Client(connection) as client:
        cold_first, cold_done = first_token(client, ask, embedding)
        follow_up = [
            *ask["conversation"],
            {"role": "assistant", "content": cold_done["answer"]},
            {"role": "user", "content": "Is there a neoplasm?"},
        ]
        follow_first, follow_done = first_token(client, {**ask, "conversation": follow_up})
    watcher.join()
    busy_times.sort()
    print(
        f"status while the slide is embedded, {len(busy_times)} round trips: p50 "
        f"{statistics.median(busy_times) * 1000:.2f} ms, max {busy_times[-1] * 1000:.1f} ms (target < 50 ms)"
        if busy_times
        else "status while the slide is embedded: not measured (the slide came from a cache)"
    )
    print(
        f"ask about the whole demo slide: first token after {cold_first:.2f} s cold (embedding included), "
        f"{follow_first * 1000:.0f} ms for a follow-up (latents from {follow_done['latents_from']}; "
        f"{follow_done['timings']['reused_tokens']} prompt tokens reused) = {cold_first / follow_first:.0f}x"
    )


def status_while_embedding(connection: Path, embedding: threading.Event, times: list[float]) -> None:
    """`status` round trips from a second client for as long as the first one's slide is being embedded."""
    if not embedding.wait(timeout=120):
        return
    with Client(connection) as client:
        while embedding.is_set():
            start = time.perf_counter()
            client.request("status")
            times.append(time.perf_counter() - start)
            time.sleep(0.005)


def first_token(client: Client, ask: dict, embedding: threading.Event | None = None) -> tuple[float, dict]:
    start, first = time.perf_counter(), None
    for event in client.events("ask", ask):
        if embedding is not None and event.type == "progress":
            (embedding.set if event.content["stage"] == "tile-embedding" else embedding.clear)()
        if event.type == "token" and first is None:
            first = time.perf_counter() - start
        if event.type == "done":
            return first or time.perf_counter() - start, event.content
    raise RuntimeError(f"the ask ended with {event.type}: {event.content}")


if __name__ == "__main__":
    main()
