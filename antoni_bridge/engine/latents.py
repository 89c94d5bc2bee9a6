"""Latents: those of recent slides kept in memory, and reads of latents alone from disk (a features file,
or the feature cache through the pipeline's index); tile features are never read to answer.

A follow-up about the same slide or region is answered from memory without opening the slide: the
memory key is the file's identity (device, inode, size, modification time) plus the region, so a
slide replaced on disk is a miss, not a stale answer.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any

from antoni_bridge.engine.sources import FeaturesSource, SlideSource

MEMORY_ENTRIES = 64  # 513 x 1280 float32 latents are 2.6 MB each


@dataclass
class Latents:
    """A slide's (or region's) latents and where they came from."""

    values: Any  # torch.Tensor (513, dim)
    key: str  # identity of the latents, also the key of the model's KV prefix cache
    source: str  # "memory", "disk" (the feature cache), "computed" or "file" (a features file)
    tiles: int | None = None
    clipped: bool = False  # the region reached beyond the slide and was clipped to it
    fingerprint: str | None = None  # the slide's content fingerprint (None for a features file)


def read_features_file(source: FeaturesSource) -> Latents:
    """The latents of a features file (its tile features, if any, stay on disk)."""
    import torch

    from antoni_bridge.features.h5 import read_latents

    return Latents(torch.from_numpy(read_latents(source.path)), f"features:{source.path}", "file")


class LatentMemory:
    """The latents of the last MEMORY_ENTRIES slides or regions, by file identity and region."""

    def __init__(self, capacity: int = MEMORY_ENTRIES) -> None:
        self.capacity = capacity
        self.entries: OrderedDict[tuple[Any, ...], Latents] = OrderedDict()

    def get(self, source: SlideSource) -> Latents | None:
        key = memory_key(source)
        if key not in self.entries:
            return None
        self.entries.move_to_end(key)
        return replace(self.entries[key], source="memory")

    def put(self, source: SlideSource, latents: Latents) -> None:
        self.entries[memory_key(source)] = latents
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)

    def forget(self, fingerprint: str | None) -> list[Latents]:
        """Drop the latents of one slide (all its regions), or all when `fingerprint` is None; return them."""
        doomed = [k for k, v in self.entries.items() if fingerprint is None or v.fingerprint == fingerprint]
        return [self.entries.pop(key) for key in doomed]

    def __len__(self) -> int:
        return len(self.entries)


def memory_key(source: SlideSource) -> tuple[Any, ...]:
    from antoni_bridge.slides.reader import file_identity

    try:
        identity: Any = file_identity(source.path)
    except OSError:  # missing or unreadable: the pipeline says so in its own words
        identity = None
    return (str(source.path), identity, source.region.key() if source.region else "", source.slide_mpp)
