"""Writing user-visible files so that a reader (or a crash) sees the old file or the new one, never half."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from antoni_bridge import platforms


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
    folder as a file: platforms.sync_folder)."""
    with tmp.open("rb+") as written:
        os.fsync(written.fileno())
    platforms.replace(tmp, path)
    platforms.sync_folder(path.parent)


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
            platforms.replace(folder, old)
        platforms.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_atomically(path: Path, text: str) -> None:
    """`text` as UTF-8, line ends as given on every system (Windows' text mode would turn a CSV row's
    \r\n into \r\r\n, a blank line between rows)."""
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="")


def write_private(path: Path, data: bytes) -> None:
    """Atomically, readable by the owner only (for secrets such as the daemon's key).

    The temporary file is created exclusively under a random name (mkstemp: O_EXCL), so a file planted
    beside it cannot become it, and is made private before the secret is written; a folder other users
    can write is refused where the system can tell, as they could swap the finished file.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    platforms.check_private_folder(path.parent)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        platforms.make_private(tmp)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        platforms.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
