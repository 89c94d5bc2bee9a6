"""A slide's (or region's) tile features with their places: what maps over the slide are computed from.

Answering reads latents alone; a map needs the tiles behind them. The feature cache and our features
files keep them (N x C floats plus level-0 coordinates), so no tile is read or embedded again when the
slide was embedded before.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from antoni_bridge.errors import BridgeError


@dataclass
class TileFeatures:
    """Tile embeddings (N, C) float32, their level-0 top-left corners (N, 2) and the tile side in level-0 px."""

    features: Any  # np.ndarray (N, C)
    coords: Any  # np.ndarray (N, 2) int64
    tile_size: int
    latents: Any = None  # np.ndarray (513, D) when the file holds them
    fingerprint: str | None = None  # the slide's content fingerprint (None for a foreign features file)

    def __len__(self) -> int:
        return len(self.coords)


def from_feature_file(data: Any, name: str) -> TileFeatures:  # data: features.h5.FeatureFile
    """The tile features a feature file holds; one clear sentence when it holds latents alone."""
    if data.features is None or len(data.coords) == 0:
        raise BridgeError(
            f"{name} holds no tile features, only the slide's latents; a map needs the tiles.",
            "give the slide itself (or a features file written by `antoni-bridge embed SLIDE --out FILE`)",
        )
    size = data.coords_attrs.get("patch_size_level0") or data.attrs.get("tile_size") or 0
    fingerprint = data.attrs.get("slide_fingerprint") or None
    return TileFeatures(data.features, data.coords, int(size), data.latents, fingerprint)


def read_tile_features_file(path: Path) -> TileFeatures:
    """Tile features of a features file (ours, or any TRIDENT-style file with `coords` and `features`)."""
    from antoni_bridge.features.h5 import FeatureFile, read_feature_file

    if Path(path).suffix in (".pt", ".pth"):  # a tensor file holds the latents alone
        return from_feature_file(FeatureFile(coords=[], contour_index=[]), Path(path).name)
    return from_feature_file(read_feature_file(path, features=True), Path(path).name)
