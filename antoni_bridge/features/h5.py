"""Feature files: one HDF5 per slide or region, in the TRIDENT/EXAONE layout ANTONI users know.

    coords         (N, 2) int64   level-0 x, y of each tile's top-left corner
    contour_index  (N,)   int32   tissue piece of each tile (0 = largest)
    features       (N, C) float32 tile embeddings (absent in a tiles-only file)
    latents        (513, D) float32 Prism slide embedding (row 0) and image latents (absent in tiles-only)

`coords` carries TRIDENT's attributes (patch_size, patch_size_level0, level0_magnification,
target_magnification, overlap, name); the file root carries the rest (mpp, level, encoders, slide
fingerprint, region geometry). Files are written to a temporary name and renamed, so a reader never
sees half a file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from antoni_bridge.errors import BridgeError
from antoni_bridge.files import replacing

FORMAT_VERSION = 1


@dataclass
class FeatureFile:
    coords: np.ndarray
    contour_index: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)
    coords_attrs: dict[str, Any] = field(default_factory=dict)
    features: np.ndarray | None = None
    latents: np.ndarray | None = None


def write_feature_file(path: str | os.PathLike[str], data: FeatureFile) -> None:
    """Write `data` to `path` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    try:
        with replacing(path) as tmp, h5py.File(tmp, "w") as h5:
            coords = h5.create_dataset("coords", data=np.asarray(data.coords, dtype=np.int64))
            coords.attrs.update(_attr_values(data.coords_attrs))
            h5.create_dataset("contour_index", data=np.asarray(data.contour_index, dtype=np.int32))
            if data.features is not None:
                h5.create_dataset("features", data=np.asarray(data.features, dtype=np.float32))
            if data.latents is not None:
                h5.create_dataset("latents", data=np.asarray(data.latents, dtype=np.float32))
            h5.attrs.update(_attr_values({"format_version": FORMAT_VERSION, **data.attrs}))
    except OSError as exc:
        raise BridgeError(
            f"Cannot write {path} ({exc.strerror or exc}).", "check the folder, its permissions and free space"
        ) from exc


def read_feature_file(path: str | os.PathLike[str], features: bool = True) -> FeatureFile:
    """Read and check a feature file; a damaged or foreign file gives one clear error. Without `features`
    the tile features stay on disk (a caller that needs only the latents reads megabytes, not a gigabyte)."""
    path = Path(path)
    if not path.is_file():
        raise BridgeError(f"No feature file at {path}.", "create one with `antoni-bridge embed SLIDE --out FILE`")
    try:
        with h5py.File(path, "r") as h5:
            if "coords" not in h5 or "contour_index" not in h5:
                raise BridgeError(f"{path.name} is not an antoni-bridge feature file (no coords).", "embed again")
            data = FeatureFile(
                coords=h5["coords"][()],
                contour_index=h5["contour_index"][()],
                attrs={k: _python(k, v) for k, v in h5.attrs.items()},
                coords_attrs={k: _python(k, v) for k, v in h5["coords"].attrs.items()},
                features=h5["features"][()] if features and "features" in h5 else None,
                latents=h5["latents"][()] if "latents" in h5 else None,
            )
    except BridgeError:
        raise
    except Exception as exc:  # h5py raises OSError, KeyError and more for damaged files
        raise BridgeError(f"{path.name} is not a readable HDF5 feature file ({exc}).", "embed the slide again") from exc
    _check_consistent(path, data)
    return data


def _check_consistent(path: Path, data: FeatureFile) -> None:
    n = len(data.coords)
    problems = []
    if data.coords.ndim != 2 or data.coords.shape[1] != 2:
        problems.append(f"coords has shape {data.coords.shape}")
    if data.contour_index.shape != (n,):
        problems.append(f"contour_index has shape {data.contour_index.shape} for {n} tiles")
    if data.features is not None and (data.features.ndim != 2 or data.features.shape[0] != n):
        problems.append(f"features has shape {data.features.shape} for {n} tiles")
    if data.latents is not None and (data.latents.ndim != 2 or not np.isfinite(data.latents).all()):
        problems.append("latents are not a finite 2-D array")
    if problems:
        raise BridgeError(f"{path.name} is inconsistent: {'; '.join(problems)}.", "embed the slide again")


JSON_ATTRS = ("region", "tissue_detector")  # structured attributes, stored as JSON text


def _attr_values(attrs: dict[str, Any]) -> dict[str, Any]:
    """HDF5 attributes hold numbers, strings and arrays; JSON_ATTRS are stored as JSON text, and strings
    that are not valid UTF-8 (file names from foreign shares) keep their bytes as escapes."""
    values = {}
    for key, value in attrs.items():
        if key in JSON_ATTRS:
            value = json.dumps(value)
        elif isinstance(value, str):
            value = value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        values[key] = value
    return values


def _python(key: str, value: Any) -> Any:
    """The inverse of `_attr_values`: plain Python values, JSON attributes decoded."""
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if key in JSON_ATTRS and isinstance(value, str):
        return json.loads(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


_EMBED_HINT = "make a features file with `antoni-bridge embed SLIDE --out FILE` (tiles writes the grid only)"


def read_latents(path: str | os.PathLike[str]) -> np.ndarray:
    """The (rows, width) slide latents in a file: our feature file, an HDF5 whose `features` dataset is
    the [513, 1280] tensor (upstream ANTONI's layout), or a .pt file holding that tensor."""
    path = Path(path)
    if not path.is_file():
        raise BridgeError(f"No features file at {path}.", "create one with `antoni-bridge embed SLIDE --out FILE`")
    if path.suffix in (".pt", ".pth"):
        return _latents_from_torch(path)
    try:
        with h5py.File(path, "r") as h5:
            name = "latents" if "latents" in h5 else "features"
            if name not in h5 and "coords" in h5:  # written by `tiles`: a grid, no model has seen it
                raise BridgeError(f"{path.name} holds tiles only, no features.", _EMBED_HINT)
            if name not in h5:
                raise BridgeError(f"{path.name} holds neither `latents` nor `features`.", _EMBED_HINT)
            latents = _numbers(path, np.asarray(h5[name][()]))
    except BridgeError:
        raise
    except Exception as exc:  # h5py raises OSError, KeyError and more for damaged or foreign files
        hint = "give a .h5 or .pt features file"
        raise BridgeError(f"{path.name} is not a readable HDF5 file ({exc}).", hint) from exc
    return np.squeeze(latents, axis=0) if latents.ndim == 3 and latents.shape[0] == 1 else latents


def _latents_from_torch(path: Path) -> np.ndarray:
    import torch

    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickles of foreign objects and damaged files raise many types
        hint = "save the tensor with torch.save"
        raise BridgeError(f"{path.name} does not hold a plain tensor ({exc}).", hint) from exc
    if isinstance(value, dict):
        value = value.get("latents", value.get("features"))
    if not isinstance(value, torch.Tensor):
        raise BridgeError(f"{path.name} does not hold a tensor.", "save the [513, 1280] tensor with torch.save")
    value = value.detach().to_dense() if value.is_sparse else value.detach()
    latents = _numbers(path, value.cpu().numpy() if value.dtype != torch.bfloat16 else value.float().numpy())
    return np.squeeze(latents, axis=0) if latents.ndim == 3 and latents.shape[0] == 1 else latents


def _numbers(path: Path, values: np.ndarray) -> np.ndarray:
    """Real floating-point latents as native float32 (other byte orders are common from Java or MATLAB)."""
    if values.dtype.kind != "f":
        raise BridgeError(
            f"{path.name} holds {values.dtype} values, not floating-point latents.",
            "give the [513, 1280] float tensor of the slide",
        )
    return np.asarray(values, dtype=np.float32)
