"""The desk's view on the demo slide (20,000 x 15,000 px), offscreen Qt, a real `serve --demo` daemon:

- tiles/s: how fast the view fills at full resolution when it jumps to unseen parts of the slide;
- the UI thread's longest stall (a 2 ms timer's longest gap) while panning at 60 frames/s, with the
  daemon idle, and again while it embeds the whole slide and streams a long answer into the chat;
- baseline: what one view of new tiles would cost a viewer that read them on the UI thread.

Target: longest stall < 50 ms while a slide is embedded.
Usage: QT_QPA_PLATFORM=offscreen python -m benchmarks.desk [--seconds 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PyQt6.QtCore import QEventLoop, QPointF, Qt, QTimer
from PyQt6.QtWidgets import QApplication

from antoni_bridge.demo_assets import demo_slide
from antoni_bridge.desk.daemon_link import stop_daemon
from antoni_bridge.desk.tile_loader import TileCache, read_tile, tiles_covering
from antoni_bridge.desk.window import DeskWindow
from antoni_bridge.slides.levels import coarsest_level
from antoni_bridge.slides.reader import Slide

FRAME_MS, PAN_PX = 16, 48  # 60 frames/s, 2,900 screen px/s: a brisk drag


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=4.0, help="of panning per measurement")
    parser.add_argument("--jumps", type=int, default=12)
    args = parser.parse_args()
    app = QApplication(sys.argv[:1])
    with tempfile.TemporaryDirectory() as scratch:
        home = Path(scratch)
        os.environ["ANTONI_BRIDGE_HOME"] = str(home)
        os.environ["ANTONI_BRIDGE_CONNECTION_FILE"] = str(home / "daemon.json")
        slide = demo_slide()
        daemon = subprocess.Popen(
            [sys.executable, "-m", "antoni_bridge.cli", "serve", "--demo", "--address", "tcp://127.0.0.1:*"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        window = DeskWindow(home / "daemon.json")
        window.ask_before_closing = False
        try:
            window.resize(1400, 900)
            window.show()
            wait_until(lambda: window.daemon_state.running, 180)
            window.open_slide(slide)
            wait_until(lambda: window.slide is not None and window.view.tiles_received > 0, 60)
            window.view.zoom_by(1.0 / window.view.zoom())  # full resolution: level 0, the most tiles
            measure(window, slide, args)
        finally:
            window.close()
            stop_daemon(home / "daemon.json", daemon)
    del app


def measure(window: DeskWindow, slide: Path, args: argparse.Namespace) -> None:
    view = window.view
    places = jump_places(window, args.jumps)
    probe = StallProbe()
    tiles, seconds = fill_after_jumps(window, places)
    print(
        f"view filled after {args.jumps} jumps to unseen places: {tiles} tiles of 512 px in {seconds:.2f} s "
        f"= {tiles / seconds:,.0f} tiles/s ({view.viewport().width()}x{view.viewport().height()} px view, level 0); "
        f"UI thread: {probe.stop()}"
    )
    per_view = read_on_this_thread(window, slide, places)
    print(
        f"baseline, the same views read on the UI thread: a stall of {statistics.median(per_view) * 1000:.0f} ms "
        f"per jump (median), {max(per_view) * 1000:.0f} ms at most"
    )

    idle = pan(window, args.seconds)
    print(f"panning, daemon idle: {idle}")
    window.chat.max_tokens.setValue(2000)
    window.region_list.setCurrentRow(0)
    window.ask("What organ is this tissue from?")  # whole slide, cold cache: tissue, 630 tiles, answer
    stages: dict[str, int] = {}
    window.job.event.connect(lambda kind, content: count_stage(stages, kind, content))
    busy = pan(window, args.seconds, until=lambda: window.job is None)
    answer = window.conversation().exchanges[-1]
    print(
        f"panning while the daemon embeds the slide and streams the answer: {busy}; the job: {answer.note} "
        f"({', '.join(f'{stage} x{count}' for stage, count in stages.items())} events)"
    )


def jump_places(window: DeskWindow, jumps: int) -> list[QPointF]:
    width, height = window.slide.dimensions
    return [QPointF(width * (0.15 + 0.7 * (i % 4) / 3), height * (0.2 + 0.6 * (i // 4 % 3) / 2)) for i in range(jumps)]


def read_on_this_thread(window: DeskWindow, slide: Path, places: list[QPointF]) -> list[float]:
    """What each jump would cost a viewer that read its tiles where it paints them."""
    view, seconds = window.view, []
    with Slide(slide) as reader:
        level = coarsest_level(reader.level_downsamples, 1 / view.zoom())
        for place in places:
            view.centre_on(place)
            keys = tiles_covering(
                view.visible_area(), level, reader.level_downsamples[level], reader.level_dimensions[level]
            )
            start = time.perf_counter()
            for key in keys:
                read_tile(reader, key)
            seconds.append(time.perf_counter() - start)
    return seconds


def count_stage(stages: dict[str, int], kind: str, content: dict) -> None:
    stage = content["stage"] if kind == "progress" else kind
    stages[stage] = stages.get(stage, 0) + 1


def fill_after_jumps(window: DeskWindow, places: list[QPointF]) -> tuple[int, float]:
    """Centre on each place with the cache emptied, and wait until every visible tile is drawn."""
    view = window.view
    received, start = view.tiles_received, time.perf_counter()
    for place in places:
        view.cache = TileCache()
        view.centre_on(place)
        view.viewport().update()
        wait_until(lambda: all_visible_loaded(window), 60)
    return view.tiles_received - received, time.perf_counter() - start


def all_visible_loaded(window: DeskWindow) -> bool:
    view, slide = window.view, window.slide
    level = coarsest_level(slide.level_downsamples, 1 / view.zoom())
    keys = tiles_covering(view.visible_area(), level, slide.level_downsamples[level], slide.level_dimensions[level])
    return all(key in view.cache for key in keys)


class StallProbe:
    """A 2 ms timer on the UI thread: the longest gap between its ticks is the longest stall."""

    def __init__(self) -> None:
        self.gaps: list[float] = []
        self.last = time.perf_counter()
        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(2)
        self.timer.timeout.connect(self._tick)
        self.timer.start()

    def _tick(self) -> None:
        now = time.perf_counter()
        self.gaps.append(now - self.last)
        self.last = now

    def stop(self) -> str:
        self.timer.stop()
        gaps = sorted(self.gaps)
        return (
            f"longest stall {gaps[-1] * 1000:.1f} ms, p99 {gaps[int(0.99 * len(gaps))] * 1000:.1f} ms, "
            f"median {statistics.median(gaps) * 1000:.1f} ms"
        )


def pan(window: DeskWindow, seconds: float, until: Callable[[], bool] | None = None) -> str:
    """Pan in a zigzag across the slide at 60 frames/s for `seconds` (or until `until()`), counting tiles."""
    view = window.view
    width, height = window.slide.dimensions
    view.cache = TileCache()
    view.centre_on(QPointF(width * 0.1, height * 0.2))
    direction = [1]

    def frame() -> None:
        centre = view.visible_area().center()
        if not width * 0.1 <= centre.x() <= width * 0.9:
            direction[0] = -direction[0]
            view.pan_by(0, 300)
        view.pan_by(direction[0] * PAN_PX, 0)

    frames = QTimer()
    frames.setInterval(FRAME_MS)
    frames.timeout.connect(frame)
    received, start = view.tiles_received, time.perf_counter()
    probe = StallProbe()
    frames.start()
    wait_until(lambda: time.perf_counter() - start > seconds and (until is None or until()), 600)
    frames.stop()
    elapsed = time.perf_counter() - start
    stalls = probe.stop()
    tiles = view.tiles_received - received
    return f"{tiles} tiles in {elapsed:.1f} s = {tiles / elapsed:,.0f} tiles/s drawn; {stalls}"


def wait_until(condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    loop = QEventLoop()
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError("the desk did not get there in time")
        QTimer.singleShot(5, loop.quit)
        loop.exec()


if __name__ == "__main__":
    main()
