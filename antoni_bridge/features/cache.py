"""The feature cache: finished feature files by key, and resumable partial work.

A key names everything the result depends on (slide content, region, grid, tissue detector, encoder
weights). Building it means opening the slide and finding tissue, so a small index also maps what a
caller knows before opening anything (the file's identity, the region, the settings) to the key: a
repeat of an unchanged slide reads its latents and nothing else. Finished entries are feature files
written atomically, so a crash leaves either the old state or the new entry, never half an entry. While
a slide is embedded, each finished batch range is saved as its own small file (also written then
renamed); a run that was interrupted resumes after the last saved range instead of starting over.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from antoni_bridge.features.h5 import FeatureFile, read_feature_file, read_latents, write_feature_file
from antoni_bridge.files import replacing, write_atomically
from antoni_bridge.platforms import pid_alive


def cache_key(parts: dict[str, Any]) -> str:
    """A short stable digest of everything a feature file depends on."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:40]


STALE_AFTER_S = 24 * 3600  # temporary files older than this were left by killed runs
_WRITER_PID = re.compile(r"\.(\d{1,10})\.tmp(?:\.npy)?$")  # `.NAME.PID.tmp`, `.START.PID.tmp.npy`


class FeatureCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._sweep_stale_temporaries()

    def _sweep_stale_temporaries(self) -> None:
        """Remove what killed runs left (a finished slide's features can be a gigabyte): at once when the
        writer named in the file's name has ended, else after STALE_AFTER_S (its pid may be reused)."""
        if not self.root.is_dir():
            return
        cutoff = time.time() - STALE_AFTER_S
        temporaries = [
            *self.root.glob(".*.tmp"),
            *self.root.glob("index/.*.tmp"),
            *self.root.glob("partial/*/.*.tmp.npy"),
        ]
        for tmp in temporaries:
            writer = _WRITER_PID.search(tmp.name)
            with contextlib.suppress(OSError):
                if (writer and not pid_alive(int(writer[1]))) or tmp.stat().st_mtime < cutoff:
                    tmp.unlink()

    def entry(self, key: str) -> Path:
        return self.root / f"{key}.h5"

    def get(self, key: str, features: bool = True) -> FeatureFile | None:
        """The entry, its tile features left unread unless `features` (they are N x 2560 floats)."""
        path = self.entry(key)
        if not path.is_file():
            return None
        try:
            return read_feature_file(path, features=features)
        except Exception:  # a damaged entry is a miss; it is replaced by the next write
            return None

    def latents(self, key: str) -> np.ndarray | None:
        """Only the latents of an entry (2.6 MB where its features can be a gigabyte); None on a miss."""
        try:
            return read_latents(self.entry(key)) if self.entry(key).is_file() else None
        except Exception:  # a damaged entry is a miss
            return None

    def remember(self, lookup: str, facts: dict[str, Any]) -> None:
        """Index an entry (`facts["key"]`) under what the caller knew before opening the slide."""
        write_atomically(self.root / "index" / f"{lookup}.json", json.dumps(facts))

    def recall(self, lookup: str) -> dict[str, Any] | None:
        """The facts remembered under `lookup`, while their entry exists."""
        try:
            facts = json.loads((self.root / "index" / f"{lookup}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(facts, dict) or not self.entry(str(facts.get("key"))).is_file():
            return None
        return facts

    def put(self, key: str, data: FeatureFile) -> Path:
        write_feature_file(self.entry(key), data)
        self.partial(key).clear()
        return self.entry(key)

    def partial(self, key: str) -> PartialFeatures:
        return PartialFeatures(self.root / "partial" / key)

    def usage(self) -> tuple[int, int]:
        """How many finished entries the cache holds, and their bytes."""
        sizes = [file.stat().st_size for file in self.root.glob("*.h5")] if self.root.is_dir() else []
        return len(sizes), sum(sizes)

    def forget(self, fingerprint: str | None) -> int:
        """Delete the entries of one slide (by content fingerprint), or all entries and partial work when
        `fingerprint` is None; returns how many finished entries went."""
        removed = 0
        for file in self.root.glob("*.h5") if self.root.is_dir() else []:
            if fingerprint is None or _fingerprint_of(file) == fingerprint:
                file.unlink(missing_ok=True)
                self.partial(file.stem).clear()
                removed += 1
        if fingerprint is None:
            shutil.rmtree(self.root / "partial", ignore_errors=True)
            shutil.rmtree(self.root / "index", ignore_errors=True)
        return removed


def _fingerprint_of(file: Path) -> str | None:
    """The slide fingerprint a cache entry records (None for a damaged entry)."""
    try:
        with h5py.File(file, "r") as h5:
            return str(h5.attrs.get("slide_fingerprint", ""))
    except Exception:  # h5py raises OSError and more for damaged files
        return None


class PartialFeatures:
    """Tile features of an unfinished run, saved in consecutive ranges `[start, stop)`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def resume(self, total: int, width: int) -> np.ndarray:
        """The saved features of tiles 0..k-1 for the largest k with no gap (empty when none).

        A damaged or foreign part (a power cut, another width) ends the usable prefix; it and every
        later part are deleted, so the next save starts clean.
        """
        parts, start = [], 0
        while start < total:
            file = self.folder / f"{start:09d}.npy"
            if not file.is_file():
                break
            try:
                part = np.load(file, allow_pickle=False)
            except Exception:  # numpy raises EOFError, ValueError, OSError... for damaged files
                part = None
            if part is None or part.ndim != 2 or part.shape[1] != width or not 0 < len(part) <= total - start:
                self._drop_from(start)
                break
            parts.append(part)
            start += len(part)
        return np.concatenate(parts).astype(np.float32) if parts else np.empty((0, width), dtype=np.float32)

    def _drop_from(self, start: int) -> None:
        for file in self.folder.glob("*.npy"):
            if file.stem.isdigit() and int(file.stem) >= start:
                file.unlink(missing_ok=True)

    def save(self, start: int, features: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with replacing(self.folder / f"{start:09d}.npy", suffix=".npy") as tmp:
            np.save(tmp, np.asarray(features, dtype=np.float32))

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
