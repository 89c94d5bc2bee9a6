"""Shared fixtures: real demo slides written once per session, tiny demo encoders, an isolated home, and a
real `antoni-bridge serve --demo` daemon per test module."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from antoni_bridge.client import CHECK_REPLIES
from antoni_bridge.demo_assets import DEMO_WEIGHTS_VARIABLE, DemoWeights, write_demo_weights
from antoni_bridge.encoders.demo import write_demo_slide_encoder, write_demo_tile_encoder
from antoni_bridge.slides.demo import DemoLayout, write_demo_slide

SMALL = (8000, 6000)  # level-0 pixels of the test slides at 0.25 um/px
os.environ[CHECK_REPLIES] = "1"  # every reply a Python client reads in the tests must match the protocol's schema
LAYOUT = 28  # the test slides' layout: three pieces, one with a hole


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test touches the user's cache or the network."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("ANTONI_BRIDGE_HOME", str(home))
    monkeypatch.setenv("ANTONI_BRIDGE_CONNECTION_FILE", str(home / "daemon.json"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A real `antoni-bridge serve --demo` process (the shipped, trained demo weights) per test module; yields
    its connection file."""
    yield from serve_demo(tmp_path_factory, {})


@pytest.fixture(scope="module")
def patient_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """As `daemon`, but a client silent for 30 s (not 1 s) has its job cancelled: for long jobs (evidence maps)
    from clients that start cold or share the CPU with the test's own work on a loaded build machine."""
    yield from serve_demo(tmp_path_factory, {}, "--client-timeout", "30")


@pytest.fixture(scope="session")
def untrained_weights(tmp_path_factory: pytest.TempPathFactory) -> DemoWeights:
    """Random demo weights, as `make-demo-weights --untrained` writes them: their answers run to any length."""
    return write_demo_weights(tmp_path_factory.mktemp("untrained-weights"))


@pytest.fixture(scope="module")
def untrained_daemon(tmp_path_factory: pytest.TempPathFactory, untrained_weights: DemoWeights) -> Iterator[Path]:
    """`serve --demo` on untrained weights, for tests that need long answers (streaming, cancelling, limits)."""
    folder = untrained_weights.antoni.parent
    yield from serve_demo(tmp_path_factory, {DEMO_WEIGHTS_VARIABLE: str(folder)})


def serve_demo(tmp_path_factory: pytest.TempPathFactory, extra_env: dict[str, str], *serve_args: str) -> Iterator[Path]:
    """`serve --demo` in a home of its own with `extra_env` and `serve_args`; yields its connection file."""
    home = tmp_path_factory.mktemp("daemon-home")
    connection = home / "daemon.json"
    env = {**os.environ, "ANTONI_BRIDGE_HOME": str(home), "ANTONI_BRIDGE_CONNECTION_FILE": str(connection)}
    env |= extra_env
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "antoni_bridge.cli",
            "serve",
            "--demo",
            "--address",
            "tcp://127.0.0.1:*",
            "--client-timeout",
            "1.0",
            *serve_args,
        ],  # short, so a killed client's job is cancelled before it could finish
        env=env,
        stdout=(output := (home / "serve.out").open("w")),  # a file, not a pipe nobody reads
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while not connection.exists():
        assert process.poll() is None, (home / "serve.out").read_text()
        assert time.monotonic() < deadline, "the daemon did not start"
        time.sleep(0.1)
    yield connection
    if process.poll() is None:
        process.kill()
    process.wait()
    output.close()


@pytest.fixture(scope="session")
def slides_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("slides")


@pytest.fixture(scope="session")
def demo_40x(slides_dir: Path) -> tuple[Path, DemoLayout]:
    path = slides_dir / "demo-40x.svs"
    layout = write_demo_slide(path, *SMALL, mpp=0.25, seed=LAYOUT, progress=False)
    return path, layout


@pytest.fixture(scope="session")
def demo_20x(slides_dir: Path) -> Path:
    """The same tissue layout scanned at 20x: half the pixels at twice the pixel size, and a pyramid whose
    levels have the 40x slide's pixel sizes (1 and 4 um/px)."""
    path = slides_dir / "demo-20x.svs"
    write_demo_slide(path, SMALL[0] // 2, SMALL[1] // 2, mpp=0.5, downsamples=(2, 8), seed=LAYOUT, progress=False)
    return path


@pytest.fixture(scope="session")
def demo_odd_pyramid(slides_dir: Path) -> Path:
    """A pyramid whose levels are 3x and 9x smaller, not powers of two."""
    path = slides_dir / "demo-odd.svs"
    write_demo_slide(path, *SMALL, mpp=0.25, downsamples=(3, 9), seed=LAYOUT, progress=False)
    return path


@pytest.fixture(scope="session")
def demo_encoders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("weights")
    return write_demo_tile_encoder(folder / "tile"), write_demo_slide_encoder(folder / "slide")


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The command as a user runs it: a separate process with the installed entry point's module."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "antoni_bridge.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )
