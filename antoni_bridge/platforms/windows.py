"""Windows: the Win32 ways behind antoni_bridge.platforms (see docs/platforms.md).

This module imports on any system, so its logic is tested everywhere: the Win32 calls (ctypes.WinDLL,
icacls, whoami) happen only inside the functions that need them.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from functools import cache
from pathlib import Path, PureWindowsPath
from typing import Any, BinaryIO

from antoni_bridge.errors import BridgeError

SIGBREAK = 21  # signal.SIGBREAK on Windows (Ctrl+Break, and a console window being closed)
STOP_SIGNALS = (signal.SIGINT, getattr(signal, "SIGBREAK", SIGBREAK))  # Windows has no SIGTERM sender
CREATE_NO_WINDOW = 0x08000000
BACKGROUND_CHILD_FLAGS = CREATE_NO_WINDOW  # a daemon started from the desk opens no console window
SYNCHRONIZE, PROCESS_QUERY_LIMITED_INFORMATION = 0x00100000, 0x1000
WAIT_TIMEOUT = 0x102
ERROR_ACCESS_DENIED = 5
REPLACE_DELAYS_S = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)  # virus scanners and the indexer hold new files briefly
_SID = re.compile(r"\bS-1(?:-\d+)+\b")
_seek_lock = threading.Lock()


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine, asked without touching it.

    Not os.kill(pid, 0): on Windows any signal but CTRL_C_EVENT/CTRL_BREAK_EVENT terminates the process.
    """
    if not 0 < pid <= 0xFFFFFFFF:  # a DWORD
        return False
    import ctypes

    kernel32 = _kernel32()
    handle = kernel32.OpenProcess(SYNCHRONIZE | PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
    if not handle:
        return alive_without_handle(ctypes.get_last_error())
    try:
        return kernel32.WaitForSingleObject(handle, 0) == WAIT_TIMEOUT  # not yet signalled: still running
    finally:
        kernel32.CloseHandle(handle)


def alive_without_handle(error: int) -> bool:
    """OpenProcess failed with `error`: access denied means the process exists (another user's or a
    protected one); anything else (ERROR_INVALID_PARAMETER above all) means no such process."""
    return error == ERROR_ACCESS_DENIED


@cache
def _kernel32() -> Any:
    import ctypes
    from ctypes import wintypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
    kernel32.OpenProcess.argtypes = (wintypes.DWORD, wintypes.BOOL, wintypes.DWORD)
    kernel32.OpenProcess.restype = wintypes.HANDLE
    kernel32.WaitForSingleObject.argtypes = (wintypes.HANDLE, wintypes.DWORD)
    kernel32.WaitForSingleObject.restype = wintypes.DWORD
    kernel32.CloseHandle.argtypes = (wintypes.HANDLE,)
    return kernel32


def make_private(path: Path) -> None:
    """Only the current user may open `path`: inherited entries removed, one full-control entry for
    the user's SID (mode bits mean nothing to Windows' access lists)."""
    arguments = icacls_arguments(path, current_user_sid(), path.is_dir())
    _run("icacls", arguments, f"restrict {path} to your user", "a FAT-formatted drive has no access lists: use NTFS")


def icacls_arguments(path: Path, sid: str, folder: bool) -> list[str]:
    """icacls's arguments that leave `path` with one entry: full control for `sid` (a folder's entry
    also passes to what is created inside it)."""
    rights = "(OI)(CI)(F)" if folder else "(F)"
    return [str(path), "/inheritance:r", "/grant:r", f"*{sid}:{rights}"]


@cache
def current_user_sid() -> str:
    """The SID of the user this process runs as (`whoami /user`, in every Windows since Vista)."""
    output = _run("whoami", ["/user", "/fo", "csv", "/nh"], "find your user's SID", "run `whoami /user` to see why")
    return sid_from_whoami(output)


def sid_from_whoami(output: str) -> str:
    """The SID in `whoami /user /fo csv /nh`'s line `"host\\name","S-1-5-21-…"`."""
    found = _SID.search(output)
    if found is None:
        raise BridgeError(f"`whoami /user` named no SID ({output.strip()[:200]!r}).", "run it in a terminal to see why")
    return found.group()


def _system_tool(name: str) -> str:
    """The tool in System32 by full path: a same-named program earlier on PATH is not run."""
    return str(Path(os.environ.get("SYSTEMROOT", r"C:\Windows")) / "System32" / f"{name}.exe")


def _run(tool: str, arguments: Sequence[str], purpose: str, hint: str) -> str:
    """The output of System32's `tool`, or one sentence saying why it could not serve `purpose`."""
    try:
        result = subprocess.run(
            [_system_tool(tool), *arguments], capture_output=True, timeout=60, creationflags=CREATE_NO_WINDOW
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BridgeError(f"Could not {purpose}: {tool} did not run ({exc}).", hint) from exc
    said = (result.stdout + result.stderr).decode("utf-8", errors="replace")  # only the SID is read: ASCII
    if result.returncode != 0:
        raise BridgeError(f"Could not {purpose}: {tool} said {said.strip()[:300]!r}.", hint)
    return said


def check_private_folder(folder: Path) -> None:
    """Nothing to refuse by mode bits: the key file itself is restricted to its user by make_private,
    and the default folder lies in the user's profile, which only that user can open."""


def keep_files_private() -> None:
    """Nothing to set: new files take their folder's access list, and the default folders (the
    profile, LOCALAPPDATA) are the user's alone."""


def open_private(path: Path) -> BinaryIO:
    """`path` emptied or created for writing bytes, restricted to the user before anything is written."""
    output = path.open("wb")
    try:
        make_private(path)
    except BridgeError:
        output.close()
        raise
    return output


def replace(src: Path, dst: Path) -> None:
    """Rename `src` over `dst` in one step, waiting out a scanner or indexer that holds either open
    (Windows refuses to replace an open file with PermissionError)."""
    retrying(lambda: os.replace(src, dst), REPLACE_DELAYS_S)


def retrying(
    action: Callable[[], None], delays_s: Sequence[float], sleep: Callable[[float], None] = time.sleep
) -> None:
    """`action`, tried again after each delay while it raises PermissionError; the last one propagates."""
    for delay in delays_s:
        try:
            return action()
        except PermissionError:
            sleep(delay)
    return action()


def sync_folder(folder: Path) -> None:
    """Nothing to do: a folder cannot be opened for fsync on Windows, and NTFS journals the rename."""


def open_for_reading(path: Path) -> int:
    """A descriptor for read_at, in binary mode (the C runtime's default text mode rewrites CR LF)."""
    return os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))  # 0: this module's tests elsewhere


def read_at(fd: int, count: int, offset: int) -> bytes:
    """`count` bytes at `offset` from many threads on one descriptor: Windows has no pread, so a seek
    and its read happen together under a lock (decoding, the slow part, still runs in parallel)."""
    with _seek_lock:
        os.lseek(fd, offset, os.SEEK_SET)
        return os.read(fd, count)


def is_absolute(path: str) -> bool:
    """Whether `path` names one file wherever the process runs from: a drive and a root (C:\\slides)
    or a share (\\\\server\\share); not \\slides (the current drive's) nor C:slides (that drive's
    current folder)."""
    return PureWindowsPath(path).is_absolute()


def data_home() -> Path:
    """Where antoni-bridge keeps caches, logs and demo files by default: the user's local application
    data (not roamed to other machines with the profile; it would carry gigabytes of features)."""
    local = os.environ.get("LOCALAPPDATA", "")
    base = Path(local) if local and PureWindowsPath(local).is_absolute() else Path.home() / "AppData" / "Local"
    return base / "antoni-bridge"


def return_big_blocks() -> None:
    """Nothing to tune: Windows' heap returns big blocks (allocated with VirtualAlloc) when freed."""


def utf8_output(streams: Iterable[object] = (sys.stdout, sys.stderr)) -> None:
    """Text printed to a file or a pipe is UTF-8: Windows would write the ANSI code page (cp1252 in
    most of Europe and the Americas), which fails on most of the world's text, so an answer with an
    arrow or a Greek letter would end the command. A console already takes Unicode."""
    for stream in streams:
        if isinstance(stream, io.TextIOWrapper) and not stream.isatty():
            stream.reconfigure(encoding="utf-8")
