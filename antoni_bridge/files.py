"""Writing user-visible files so that a reader (or a crash) sees the old file or the new one, never half."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from antoni_bridge import platforms


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed over `path` when the block ends without error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        with tmp.open("rb+") as written:  # on disk before the rename: a power cut leaves old or new
            os.fsync(written.fileno())
        platforms.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
