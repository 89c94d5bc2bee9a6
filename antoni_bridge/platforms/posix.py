"""Linux and macOS: the POSIX calls behind antoni_bridge.platforms (see docs/platforms.md)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from antoni_bridge.errors import BridgeError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl+C in a terminal; `kill`, systemd, launchd
BACKGROUND_CHILD_FLAGS = 0  # subprocess.Popen(creationflags=...): none needed, a child has no window to hide
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
BIG_BLOCK_BYTES = 1 << 20


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine: signal 0 checks without delivering anything."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process holds the pid
        return True
    except OverflowError:  # not a pid this system can have
        return False
    return True


def make_private(path: Path) -> None:
    """Readable and writable by the owner only (a folder: also enterable by the owner only)."""
    path.chmod(0o700 if path.is_dir() else 0o600)


def check_private_folder(folder: Path) -> None:
    """Refuse a folder another user owns or can write: they could read or replace a secret put there."""
    info = folder.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise BridgeError(
            f"The folder {folder} can be written by other users, who could read or replace the daemon's key.",
            "use a folder only you can write (ANTONI_BRIDGE_CONNECTION_FILE=~/.antoni-bridge/daemon.json), "
            f"or run `chmod go-w {folder}` if it is yours",
        )


def keep_files_private() -> None:
    """Files and folders this process creates from now on are its user's alone (logs, caches, keys)."""
    os.umask(0o077)


def open_private(path: Path) -> BinaryIO:
    """`path` emptied or created for writing bytes, the owner's alone from its first byte (an existing
    file keeps its mode on open, so it is set too)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "wb")


def replace(src: Path, dst: Path) -> None:
    """Rename `src` over `dst` in one step: a reader sees the old file or the new one."""
    os.replace(src, dst)


def sync_folder(folder: Path) -> None:
    """Make a rename inside `folder` survive a power cut (the folder's entry is written, not only the file)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_for_reading(path: Path) -> int:
    """A descriptor for read_at."""
    return os.open(path, os.O_RDONLY)


def read_at(fd: int, count: int, offset: int) -> bytes:
    """`count` bytes at `offset`, safe from many threads on one descriptor (no shared file position)."""
    return os.pread(fd, count, offset)


def is_absolute(path: str) -> bool:
    """Whether `path` names one file wherever the process runs from: it starts at /."""
    return PurePosixPath(path).is_absolute()


def data_home() -> Path:
    """Where antoni-bridge keeps caches, logs and demo files by default: the XDG cache folder
    (~/.cache on Linux and, by the project's choice, on macOS too)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"  # XDG: ignore relative
    return base / "antoni-bridge"


def return_big_blocks() -> None:
    """Blocks of a MiB or more are mapped on their own and unmapped when freed (glibc only).

    glibc's malloc raises its mmap threshold each time a big block is freed (up to 32 MiB), so after a
    few large messages every later one comes from the heap, whose freed pages stay with the process: a
    client sending 10-30 MiB messages left the daemon about 1.5 GB larger for good. A fixed threshold
    keeps big blocks in their own mappings, returned on free. Elsewhere (macOS, musl) nothing changes.
    """
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):  # no C library by that name, or not glibc
        return
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, BIG_BLOCK_BYTES)
        mallopt(M_TRIM_THRESHOLD, BIG_BLOCK_BYTES)


def utf8_output() -> None:
    """Nothing to change: printed text takes the locale's encoding, which is what the terminal or the
    next program expects, and Python already uses UTF-8 under the C locale (PEP 538, PEP 540)."""
