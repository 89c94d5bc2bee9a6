"""Writing user-visible files so that a reader (or a crash) sees the old file or the new one, never half."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from antoni_bridge.errors import BridgeError


@contextlib.contextmanager
def replacing(path: Path, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed over `path` when the block ends without error.

    The temporary name carries this process's id (so a cache sweep can tell a dead writer's leftovers)
    and `suffix` (for writers that append one, such as numpy's .npy)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")
    try:
        yield tmp
        durable_replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def durable_replace(tmp: Path, path: Path) -> None:
    """Rename a finished temporary file into place, synced first so a power cut leaves old or new, never
    an empty file; the folder is synced too, so the rename itself survives (POSIX; Windows cannot open a
    folder as a file)."""
    with tmp.open("rb+") as written:
        os.fsync(written.fileno())
    os.replace(tmp, path)
    if os.name == "posix":
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


@contextlib.contextmanager
def replacing_folder(folder: Path) -> Iterator[Path]:
    """A temporary folder beside `folder` to fill; put in its place, whole, when the block ends without
    error. An older folder of the name is moved aside (not deleted) until the new one is in place, and
    what a killed writer left beside it is removed first."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    old = folder.with_name(f".{folder.name}.{os.getpid()}.old")
    for stale in folder.parent.glob(f".{folder.name}.*"):
        shutil.rmtree(stale, ignore_errors=True)
    try:
        yield tmp
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_atomically(path: Path, text: str) -> None:
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_private(path: Path, data: bytes) -> None:
    """Atomically, readable by the owner only (for secrets such as the daemon's key).

    The temporary file is created exclusively under a random name (mkstemp: O_EXCL, mode 0600), so a file
    planted beside it cannot become it; a folder other users can write is refused, as they could swap
    the finished file. On Windows, mode bits do not apply: the file takes the folder's access list, and
    the default folder lies under the user's profile, which only that user can read.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _refuse_shared_folder(path.parent)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _refuse_shared_folder(folder: Path) -> None:
    if os.name != "posix":
        return
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


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` runs on this machine (a temporary file's or a connection file's writer).

    Not os.kill(pid, 0) on Windows: there, any signal number but CTRL_C/CTRL_BREAK terminates the process.
    """
    if pid <= 0:
        return False
    if os.name == "nt":
        return _windows_pid_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process holds the pid
        return True
    except OverflowError:  # not a pid this system can have
        return False
    return True


def _windows_pid_alive(pid: int) -> bool:
    import ctypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return ctypes.get_last_error() == 5  # ERROR_ACCESS_DENIED: it exists, another user's
    try:
        code = ctypes.c_ulong()
        kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        return code.value == 259  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)
