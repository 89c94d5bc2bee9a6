"""The backup made before a batch run changes a user's QuPath project in place."""

from __future__ import annotations

import shutil
import time
from pathlib import Path


def backup_folder(folder: Path) -> Path:
    """A full copy of `folder` beside it, named with the time, made before anything in it is changed."""
    backup = folder.with_name(f"{folder.name}.backup-{time.strftime('%Y%m%d-%H%M%S')}")
    shutil.copytree(folder, backup)
    return backup
