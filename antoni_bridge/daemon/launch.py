"""Starting a local daemon as a separate process, for front ends that offer to start one (demo, desk).

The daemon announces itself by writing the connection file; a start is complete when a connection file
naming the new process exists. The child's output goes to a log file, so a start that fails can be
explained with the daemon's own last words.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from antoni_bridge import paths, platforms
from antoni_bridge.daemon.protocol import ConnectionInfo
from antoni_bridge.errors import BridgeError

START_TIMEOUT_S = 180.0  # first start on a fresh machine also builds the demo weights


def start_daemon(
    serve_args: Sequence[str] = ("--demo",),
    connection_file: Path | None = None,
    log_file: Path | None = None,
    timeout_s: float = START_TIMEOUT_S,
) -> subprocess.Popen[bytes]:
    """`antoni-bridge serve SERVE_ARGS` in a new process, returned once it listens."""
    connection_file = connection_file or paths.connection_file()
    log_file = log_file or paths.home() / "daemon-start.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "ANTONI_BRIDGE_CONNECTION_FILE": str(connection_file)}
    with platforms.open_private(log_file) as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "antoni_bridge.cli", "serve", *serve_args],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            creationflags=platforms.BACKGROUND_CHILD_FLAGS,
        )
    deadline = time.monotonic() + timeout_s
    while not _announced(connection_file, process.pid):
        if process.poll() is not None:
            raise BridgeError(f"The daemon did not start: {_last_line(log_file)}", f"its output is in {log_file}")
        if time.monotonic() > deadline:
            process.kill()
            raise BridgeError(f"The daemon did not start within {timeout_s:.0f} s.", f"its output is in {log_file}")
        time.sleep(0.05)
    return process


def _announced(connection_file: Path, pid: int) -> bool:
    try:
        return ConnectionInfo.read(connection_file).pid == pid
    except BridgeError:  # not written yet, or being replaced
        return False


def _last_line(log_file: Path) -> str:
    """The daemon's own account of why it stopped: its `error:` line when it gave one, else its last line."""
    lines = [
        line.strip() for line in log_file.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()
    ]
    errors = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
    return errors[-1] if errors else lines[-1] if lines else "it exited without a word."
