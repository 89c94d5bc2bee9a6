"""Writing the batch's outputs without ever leaving a half-written file or touching the user's originals."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path


def write_atomically(path: Path, text: str) -> None:
    """Write to a temporary name beside `path`, then rename: readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def backup_folder(folder: Path) -> Path:
    """A full copy of `folder` beside it, named with the time, made before anything in it is changed."""
    backup = folder.with_name(f"{folder.name}.backup-{time.strftime('%Y%m%d-%H%M%S')}")
    shutil.copytree(folder, backup)
    return backup
