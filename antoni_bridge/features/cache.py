"""The feature cache: finished feature files by key, and resumable partial work.

A key names everything the result depends on (slide content, region, grid, tissue detector, encoder
weights). Finished entries are feature files written atomically, so a crash leaves either the old
state or the new entry, never half an entry. While a slide is embedded, each finished batch range is
saved as its own small file (also written then renamed); a run that was interrupted resumes after the
last saved range instead of starting over.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from antoni_bridge.features.h5 import FeatureFile, read_feature_file, write_feature_file


def cache_key(parts: dict[str, Any]) -> str:
    """A short stable digest of everything a feature file depends on."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:40]


class FeatureCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def entry(self, key: str) -> Path:
        return self.root / f"{key}.h5"

    def get(self, key: str) -> FeatureFile | None:
        path = self.entry(key)
        if not path.is_file():
            return None
        try:
            return read_feature_file(path)
        except Exception:  # a damaged entry is a miss; it is replaced by the next write
            return None

    def put(self, key: str, data: FeatureFile) -> Path:
        write_feature_file(self.entry(key), data)
        self.partial(key).clear()
        return self.entry(key)

    def partial(self, key: str) -> PartialFeatures:
        return PartialFeatures(self.root / "partial" / key)


class PartialFeatures:
    """Tile features of an unfinished run, saved in consecutive ranges `[start, stop)`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def resume(self, total: int, width: int) -> np.ndarray:
        """The saved features of tiles 0..k-1 for the largest k with no gap (empty when none)."""
        parts, start = [], 0
        while start < total:
            file = self.folder / f"{start:09d}.npy"
            try:
                part = np.load(file, allow_pickle=False)
            except (OSError, ValueError):
                break
            if part.ndim != 2 or part.shape[1] != width or len(part) == 0:
                break
            parts.append(part)
            start += len(part)
        if start > total:
            return np.empty((0, width), dtype=np.float32)
        return np.concatenate(parts).astype(np.float32) if parts else np.empty((0, width), dtype=np.float32)

    def save(self, start: int, features: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.folder / f"{start:09d}.npy"
        tmp = self.folder / f".{start:09d}.{os.getpid()}.tmp.npy"
        np.save(tmp, np.asarray(features, dtype=np.float32))
        os.replace(tmp, final)

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
