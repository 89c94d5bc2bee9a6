"""What the daemon's worker holds: the models (loaded on first use, or by `load`), the feature cache on
disk and the latents of recent slides in memory. Touched only by the worker thread.

A follow-up about the same slide or region is answered from memory without opening the slide: the
memory key is the file's identity (device, inode, size, modification time) plus the region, so a
slide replaced on disk is a miss, not a stale answer.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from antoni_bridge.errors import BridgeError
from antoni_bridge.slides.planning import ProgressCallback

MODEL_PARTS = ("encoders", "model")
MEMORY_ENTRIES = 64  # 513 x 1280 float32 latents are 2.6 MB each


@dataclass
class ModelSources:
    """Where the daemon's models come from (demo or real)."""

    tile_encoder: str
    slide_encoder: str
    weights: Path
    llm: str | None = None
    device: str = "cpu"
    quant: str = "auto"
    demo: bool = False


@dataclass
class Latents:
    """A slide's (or region's) latents and where they came from."""

    values: Any  # torch.Tensor (513, dim)
    key: str  # identity of the latents, also the key of the model's KV prefix cache
    source: str  # "memory", "disk" (the feature cache), "computed" or "file" (a features file)
    tiles: int | None = None
    clipped: bool = False  # the region reached beyond the slide and was clipped to it


class Runtime:
    def __init__(self, sources: ModelSources, cache_dir: Path, slide_roots: Sequence[Path] = ()) -> None:
        self.sources, self.cache_dir = sources, cache_dir
        self.slide_roots = [Path(root).resolve() for root in slide_roots]
        self.encoders: Any = None
        self.model: Any = None
        self.memory: OrderedDict[tuple[Any, ...], Latents] = OrderedDict()

    # ------------------------------------------------------------------ models

    def loaded(self) -> list[str]:
        return [part for part in MODEL_PARTS if getattr(self, part) is not None]

    def load(self, parts: Sequence[str] = MODEL_PARTS) -> None:
        from antoni_bridge.encoders.pipeline import Encoders
        from antoni_bridge.model.antoni import AntoniModel

        s = self.sources
        if "encoders" in parts and self.encoders is None:
            self.encoders = Encoders.load(s.tile_encoder, s.slide_encoder, device=s.device)
        if "model" in parts and self.model is None:
            self.model = AntoniModel.load(s.weights, s.llm, s.device, s.quant)

    def unload(self, parts: Sequence[str] = MODEL_PARTS) -> None:
        """Drop models and give their GPU memory back to other programs."""
        from antoni_bridge.gpu import release_unused

        for part in parts:
            setattr(self, part, None)
        release_unused()

    # ------------------------------------------------------------------ latents

    def latents_for(self, content: dict[str, Any], progress: ProgressCallback) -> Latents:
        """The latents a request names: a features file, or a slide (or region) from memory, disk or the
        encoders."""
        import torch

        from antoni_bridge.features.h5 import read_latents

        if "features" in content:
            path = self.allowed(content["features"])
            return Latents(torch.from_numpy(read_latents(path)), f"features:{path}", "file")
        request = self.slide_request(content)
        memory_key = _memory_key(request)
        if memory_key in self.memory:
            self.memory.move_to_end(memory_key)
            return replace(self.memory[memory_key], source="memory")
        latents = self._embed(request, progress)
        self.memory[memory_key] = latents
        while len(self.memory) > MEMORY_ENTRIES:
            self.memory.popitem(last=False)
        return latents

    def slide_request(self, content: dict[str, Any]):  # -> planning.SlideRequest
        from antoni_bridge.slides.planning import SlideRequest
        from antoni_bridge.slides.regions import Region

        region = Region.from_geojson_dict(content["region"]) if content.get("region") else None
        return SlideRequest(self.allowed(content["slide"]), region=region, slide_mpp=content.get("slide_mpp"))

    def _embed(self, request, progress: ProgressCallback) -> Latents:  # request: planning.SlideRequest
        import torch

        from antoni_bridge.encoders.pipeline import embed_slide
        from antoni_bridge.features.cache import FeatureCache

        self.load(["encoders"])
        result = embed_slide(request, self.encoders, FeatureCache(self.cache_dir), progress)
        region = request.region.key() if request.region else ""
        key = f"{result.data.attrs['slide_fingerprint']}:{region}"
        source = "disk" if result.cache_hit else "computed"
        clipped = result.grid.region is not request.region  # clip_to_slide returns a region inside as it is
        return Latents(torch.from_numpy(result.data.latents), key, source, len(result.data.coords), clipped)

    def allowed(self, path: str) -> Path:
        """The path, resolved, when it lies under an allowed slide root (any path when none is set)."""
        from antoni_bridge.slides.reader import check_input_file

        check_input_file(Path(path).expanduser())  # a named pipe would block the worker; a link loop has no end
        try:
            resolved = Path(path).expanduser().resolve()
        except (OSError, RuntimeError) as exc:  # a link loop; ~user of no user
            raise BridgeError(f"{path[:300]} cannot be resolved ({exc.strerror or exc}).", "check the path") from None
        if self.slide_roots and not any(resolved.is_relative_to(root) for root in self.slide_roots):
            roots = ", ".join(str(root) for root in self.slide_roots)
            raise BridgeError(f"{path} is outside the daemon's slide folders.", f"this daemon reads only under {roots}")
        return resolved

    # ------------------------------------------------------------------ forgetting

    def forget(self, slide: str | None) -> dict[str, int]:
        """Drop cached latents of one slide (all its regions), or of every slide when `slide` is None."""
        from antoni_bridge.features.cache import FeatureCache
        from antoni_bridge.slides.reader import Slide

        fingerprint = None
        if slide is not None:
            with Slide(self.allowed(slide)) as opened:
                fingerprint = opened.fingerprint
        doomed = [k for k, v in self.memory.items() if fingerprint is None or v.key.startswith(f"{fingerprint}:")]
        for key in doomed:
            if self.model is not None:
                self.model.prefixes.entries.pop(self.memory[key].key, None)
            del self.memory[key]
        on_disk = FeatureCache(self.cache_dir).forget(fingerprint)
        return {"memory": len(doomed), "disk": on_disk}

    def cache_summary(self) -> dict[str, Any]:
        from antoni_bridge.features.cache import FeatureCache

        entries, size = FeatureCache(self.cache_dir).usage()
        return {"memory_entries": len(self.memory), "disk_entries": entries, "disk_bytes": size}


def _memory_key(request) -> tuple[Any, ...]:  # request: planning.SlideRequest
    try:
        stat = os.stat(request.path)
    except OSError:  # missing or unreadable: the pipeline says so in its own words
        return (str(request.path), None)
    identity = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    return (str(request.path), identity, request.region.key() if request.region else "", request.slide_mpp)
