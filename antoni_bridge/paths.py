"""Where antoni-bridge keeps its files: one home folder, `ANTONI_BRIDGE_HOME` or the system's own place
(~/.cache/antoni-bridge on Linux and macOS, %LOCALAPPDATA%\\antoni-bridge on Windows: docs/platforms.md)."""

from __future__ import annotations

import os
from pathlib import Path

from antoni_bridge import platforms


def home() -> Path:
    """Absolute (a relative ANTONI_BRIDGE_HOME is taken from the current folder): paths under it go to a
    daemon, which takes absolute paths only."""
    return Path(os.environ.get("ANTONI_BRIDGE_HOME") or platforms.data_home()).absolute()


def feature_cache_dir() -> Path:
    return home() / "features"


def demo_dir() -> Path:
    return home() / "demo"


def connection_file() -> Path:
    """Where the running daemon says how to reach it (`ANTONI_BRIDGE_CONNECTION_FILE` overrides): the same
    place on every system, as the QuPath extension looks there too."""
    return Path(os.environ.get("ANTONI_BRIDGE_CONNECTION_FILE") or Path.home() / ".antoni-bridge" / "daemon.json")


def log_file() -> Path:
    return home() / "logs" / "daemon.log"


def conversations_dir() -> Path:
    return home() / "conversations"
