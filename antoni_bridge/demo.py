"""`antoni-bridge demo`: the main job as a user meets it, offline, on the demo slide and demo weights.

It starts a daemon of its own (on a free loopback port, with its own connection file, so a daemon the
user already runs is left alone), asks the demo task's questions about the whole slide, then about a
region holding one DAB piece, then follows up on the whole slide (answered from the daemon's memory, the
prompt's KV cache reused), and stops the daemon. The demo weights were trained on this synthetic task
only (which stain, DAB or not, how many pieces); each answer is printed with the truth from the layout.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from antoni_bridge import paths
from antoni_bridge.client import Client
from antoni_bridge.commands.ask import reliance_line
from antoni_bridge.demo_assets import DEMO_NOTE
from antoni_bridge.engine import Cancelled
from antoni_bridge.errors import BridgeError

REGION = (290, 997, 3311, 3311)  # level-0 box around the demo slide's largest DAB piece, and nothing else
OPTIONS = {"max_new_tokens": 40}  # the rest as the daemon's defaults (greedy)
SOURCES = {"computed": "computed", "disk": "from the disk cache", "memory": "from the daemon's memory"}


def run_demo(on_progress: Callable[[Any], None], close_progress: Callable[[], None]) -> None:
    """Run the three questions, printing answers as they stream; progress (`planning.Progress`) goes to
    `on_progress`."""
    from antoni_bridge.daemon.launch import start_daemon
    from antoni_bridge.demo_assets import demo_slide, demo_weights
    from antoni_bridge.demo_task import QUESTIONS, SlideFacts, answers
    from antoni_bridge.slides.demo import demo_layout
    from antoni_bridge.slides.regions import Region

    slide = demo_slide()
    demo_weights()  # built before the daemon starts, so its start is quick
    connection = paths.home() / "demo-daemon.json"
    print("starting a daemon with the demo weights", flush=True)
    process = start_daemon(
        ["--demo", "--address", "tcp://127.0.0.1:*", "--log-file", str(paths.home() / "logs" / "demo-daemon.log")],
        connection_file=connection,
    )
    region = Region.rectangle(*REGION).to_geojson()
    layout = demo_layout(10_000, 7_500)
    truth = {"slide": answers(SlideFacts.of(layout)), "region": answers(SlideFacts.of(layout, REGION))}
    steps = [
        ("the whole slide", {"slide": str(slide)}, "stain", "slide"),
        (f"a region ({REGION[0]},{REGION[1]} {REGION[2]}x{REGION[3]})", {"slide": str(slide), "region": region},
         "stain", "region"),
        ("the whole slide again (follow-up)", {"slide": str(slide)}, "dab", "slide"),
    ]  # fmt: skip
    conversations: dict[str, list[dict[str, str]]] = {}
    stopping = False
    try:
        with Client(connection, timeout_s=30) as client:
            for label, target, name, conversation_key in steps:
                question = QUESTIONS[name]
                print(f"\n== {label}: {question}", flush=True)
                conversation = conversations.setdefault(conversation_key, [])
                conversation.append({"role": "user", "content": question})
                content = {**target, "conversation": conversation, "options": OPTIONS}
                done = _ask(client, content, on_progress, close_progress)
                print(f"   truth:  {truth[conversation_key][name]}", flush=True)
                conversation.append({"role": "assistant", "content": done["answer"]})
            client.request("shutdown")
            stopping = True
        _write_overview(slide)
    finally:
        _stop(process, connection, 30 if stopping else 0)


def _ask(
    client: Client, content: dict[str, Any], on_progress: Callable[[Any], None], close_progress: Callable[[], None]
):
    """One question through the client's job loop, its answer printed as it streams; the `done` content."""
    started, answering = time.perf_counter(), False

    def on_token(text: str) -> None:
        nonlocal answering
        if not answering:
            close_progress()
            print("   answer: ", end="")
            answering = True
        print(text, end="", flush=True)

    try:
        done = client.run_job("ask", content, on_progress=on_progress, on_token=on_token)
    except Cancelled as exc:
        raise BridgeError(f"The demo daemon cancelled a question ({exc}).", "see the demo daemon's log") from None
    _print_summary(done, time.perf_counter() - started)
    return done


def _print_summary(done: dict[str, Any], seconds: float) -> None:
    timings = done["timings"]
    print(
        f"\n   [latents {tuple(done['latents_shape'])} of {done['tiles']} tiles {SOURCES[done['latents_from']]}; "
        f"{len(done['token_ids'])} tokens, first after {timings['first_token_s'] * 1000:.0f} ms; "
        f"{timings['reused_tokens']} prompt tokens reused; {seconds:.2f} s in all] {DEMO_NOTE}",
        flush=True,
    )
    if done.get("reliance"):  # how much the answer depends on the slide, next to every answer
        print(f"   {reliance_line(done['reliance'])}", flush=True)


def _write_overview(slide: Path) -> None:
    """The tissue and tile grid of the demo slide, for the user to look at (planning only, no model)."""
    from antoni_bridge.slides.overview import write_overview
    from antoni_bridge.slides.planning import SlideRequest, plan

    planned = plan(SlideRequest(slide))
    out = paths.demo_dir() / "demo-overview.png"
    with planned.slide as opened:
        write_overview(opened, planned.tissue, planned.grid, out)
    print(f"\noverview with tissue and tiles: {out}")


def _stop(process: subprocess.Popen[bytes], connection: Path, grace_s: float) -> None:
    """Wait for the daemon to finish stopping; end it when it was not asked to or does not."""
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.terminate()
        process.wait()
        connection.unlink(missing_ok=True)
