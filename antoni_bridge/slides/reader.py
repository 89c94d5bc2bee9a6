"""Opening whole-slide images: tiffslide first, openslide for the formats tiffslide lacks.

Everything above this module sees one small `Slide` API with level-0 pixel coordinates, a known
microns-per-pixel, and clear `BridgeError`s for files that are missing, not slides, truncated or
without a physical scale.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import stat
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from antoni_bridge.errors import BridgeError

CHUNK = 1 << 20
MPP_HINT = "pass --slide-mpp 0.25 for a 40x scan or --slide-mpp 0.5 for a 20x scan"


@dataclass(frozen=True)
class NativeLevel:
    """A pyramid level stored as one tiled TIFF page, so its tiles can be decoded directly."""

    page: tifffile.TiffPage
    tile_width: int
    tile_height: int
    offsets: tuple[int, ...]
    bytecounts: tuple[int, ...]

    @property
    def tiles_across(self) -> int:
        return -(-self.page.imagewidth // self.tile_width)

    @property
    def tiles_down(self) -> int:
        return -(-self.page.imagelength // self.tile_height)


class Slide:
    """An open slide. Coordinates are level-0 pixels (x, y); pixels come back as RGB uint8 arrays."""

    def __init__(self, path: str | os.PathLike[str], mpp: float | None = None, backend: str = "auto") -> None:
        """`backend` "auto" tries tiffslide, then openslide; "openslide" or "tiffslide" forces one."""
        self.path = Path(path)
        check_input_file(self.path)
        self._backend, self._handle = _open_backend(self.path, backend)
        self.file_identity = _identity(os.stat(self.path))  # the native reader checks it reads this file
        try:
            self._read_layout(mpp)
        except BaseException:
            self.close()
            raise

    def _read_layout(self, mpp: float | None) -> None:
        """Metadata, scale and a check of every level; damaged files fail here, with one sentence."""
        try:
            self.properties: dict[str, Any] = dict(self._handle.properties)
            self.dimensions: tuple[int, int] = tuple(self._handle.dimensions)
            self.level_dimensions: tuple[tuple[int, int], ...] = tuple(tuple(d) for d in self._handle.level_dimensions)
            self.level_downsamples: tuple[float, ...] = tuple(float(d) for d in self._handle.level_downsamples)
        except Exception as exc:  # tiffslide and openslide raise many types for damaged metadata
            hint = "the file is damaged or its metadata unusual"
            if "encoding" in str(exc):
                hint = f"repair the description with: python -m tiffslide.repair description-tag-encoding {self.path}"
            raise BridgeError(f"{self.path.name}: its metadata cannot be read ({exc}).", hint) from exc
        self.mpp = mpp if mpp is not None else _mpp_from_properties(self.properties, self._backend)
        if self.mpp is None:
            raise BridgeError(f"{self.path.name} has no microns-per-pixel in its metadata.", MPP_HINT)
        if not math.isfinite(self.mpp) or not 0.01 <= self.mpp <= 100:
            raise BridgeError(f"{self.path.name}: microns per pixel {self.mpp} is not plausible.", MPP_HINT)
        if self._backend == "tiffslide":
            self._check_pixels()
            self._check_not_truncated()

    @property
    def backend(self) -> str:
        return self._backend

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def objective_power(self) -> float | None:
        key = "tiffslide.objective-power" if self._backend == "tiffslide" else "openslide.objective-power"
        value = self.properties.get(key)
        try:
            return float(value) if value not in (None, "") else None
        except (TypeError, ValueError):
            return None

    @cached_property
    def fingerprint(self) -> str:
        """Identifies the file's content cheaply (size, first and last MiB), so a copied slide hits the cache."""
        size = self.path.stat().st_size
        digest = hashlib.sha256(str(size).encode())
        with self.path.open("rb") as fh:
            digest.update(fh.read(CHUNK))
            fh.seek(max(0, size - CHUNK))
            digest.update(fh.read(CHUNK))
        return digest.hexdigest()[:32]

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """Read `size` (w, h) pixels of `level` whose top-left corner is `location` in level-0 pixels."""
        try:
            if self._backend == "tiffslide":
                pixels = self._handle.read_region(location, level, size, as_array=True)
            else:
                pixels = np.asarray(self._handle.read_region(location, level, size))
        except Exception as exc:  # decoders raise many types for damaged data
            raise BridgeError(
                f"{self.path.name}: could not decode pixels at {location} on level {level} ({exc}).",
                "the file is probably damaged; copy it again from the scanner or archive",
            ) from exc
        return to_rgb(pixels)

    def read_level(self, level: int) -> np.ndarray:
        """The whole of one (small) level as an RGB array, for tissue detection and overviews."""
        return self.read_region((0, 0), level, self.level_dimensions[level])

    def native_level(self, level: int) -> NativeLevel | None:
        """The tiled TIFF page behind `level` when its tiles can be decoded directly, else None."""
        if self._backend != "tiffslide":
            return None
        series = self._handle.ts_tifffile.series[int(self.properties.get("tiffslide.series-index", 0))]
        if level >= len(series.levels):
            return None
        pages = series.levels[level].pages
        page = pages[0] if len(pages) == 1 else None
        if (
            not isinstance(page, tifffile.TiffPage)
            or not page.is_tiled
            or page.dtype != np.uint8
            or page.samplesperpixel not in (3, 4)
            or page.planarconfig != tifffile.PLANARCONFIG.CONTIG
            or page.imagedepth != 1
            or (page.imagewidth, page.imagelength) != self.level_dimensions[level]
        ):
            return None
        native = NativeLevel(page, page.tilewidth, page.tilelength, page.dataoffsets, page.databytecounts)
        tiles = native.tiles_across * native.tiles_down
        if len(native.offsets) != tiles or len(native.bytecounts) != tiles:
            raise BridgeError(
                f"{self.path.name} is damaged: level {level} lists {len(native.offsets)} tile offsets "
                f"and {len(native.bytecounts)} sizes for {tiles} tiles.",
                "the file was cut or corrupted; copy it again",
            )
        return native

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_pixels(self) -> None:
        """RGB(A) or grey, 8 bits: what stains look like. Other sample types would be silently wrong."""
        page = self._handle.ts_tifffile.series[int(self.properties.get("tiffslide.series-index", 0))].levels[0].keyframe
        if page.dtype != np.uint8 or page.samplesperpixel not in (1, 2, 3, 4):
            raise BridgeError(
                f"{self.path.name} stores {page.samplesperpixel} samples of {page.dtype} per pixel; "
                "antoni-bridge reads 8-bit RGB or grey brightfield slides.",
                "convert it to an 8-bit RGB pyramidal TIFF (e.g. with QuPath or vips)",
            )

    def _check_not_truncated(self) -> None:
        size = self.path.stat().st_size
        for level in range(self.level_count):
            native = self.native_level(level)
            if native is None:
                continue
            end = max((o + c for o, c in zip(native.offsets, native.bytecounts, strict=True) if c), default=0)
            if end > size:
                raise BridgeError(
                    f"{self.path.name} is truncated: level {level} needs {end:,} bytes but the file has {size:,}.",
                    "the copy is incomplete; copy the slide again",
                )


def _identity(stat: os.stat_result) -> tuple[int, int, int, int]:
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


def file_identity(path: Path) -> tuple[int, int, int, int]:
    """Device, inode, size and modification time: a file replaced or rewritten on disk has another."""
    return _identity(os.stat(path))


def same_file(slide: Slide, fd: int) -> bool:
    """Whether an open descriptor is still the file the slide's metadata came from."""
    return _identity(os.fstat(fd)) == slide.file_identity


def check_input_file(path: Path) -> None:
    """Refuse by name what is not a regular file: reading a named pipe or a device blocks or never ends,
    and a symbolic link loop has no file at its end."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise BridgeError(f"No slide at {path}.", "check the path; it must be a file on this machine") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BridgeError(f"{path} is a symbolic link that loops.", "give the path of the file itself") from None
        raise BridgeError(f"Cannot read {path} ({exc.strerror}).", "check the path and its permissions") from None
    if stat.S_ISDIR(mode):
        raise BridgeError(f"{path} is a folder, not a slide file.", "give the slide's file itself")
    if not stat.S_ISREG(mode):
        kind = "named pipe" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode) else "device"
        raise BridgeError(f"{path} is a {kind}, not a file.", "give a slide file stored on disk")


def _open_backend(path: Path, backend: str) -> tuple[str, Any]:
    import tiffslide

    if backend == "openslide":
        handle = _try_openslide(path)
        if handle is None:
            raise BridgeError(
                f"openslide cannot open {path.name} (or is not installed).",
                "pip install 'antoni-bridge[openslide]', or use the default reader",
            )
        return "openslide", handle
    try:
        return "tiffslide", tiffslide.TiffSlide(path)
    except PermissionError as exc:
        raise BridgeError(f"{path.name} cannot be read: permission denied.", "check the file's permissions") from exc
    except Exception as tiff_error:  # tifffile raises several types for non-TIFF input
        handle = _try_openslide(path) if backend == "auto" else None
        if handle is not None:
            return "openslide", handle
        raise BridgeError(
            f"{path.name} is not a slide antoni-bridge can read ({type(tiff_error).__name__}: {tiff_error}).",
            "SVS, NDPI, SCN and pyramidal TIFF are read directly; for MRXS, DICOM and other formats "
            "install the openslide extra: pip install 'antoni-bridge[openslide]'",
        ) from tiff_error


def _try_openslide(path: Path) -> Any | None:
    try:
        import openslide
    except ImportError:
        return None
    try:
        return openslide.OpenSlide(str(path))
    except Exception:  # openslide raises its own types and OSError alike for unreadable files
        return None


def _mpp_from_properties(properties: dict[str, Any], backend: str) -> float | None:
    key = "tiffslide.mpp-x" if backend == "tiffslide" else "openslide.mpp-x"
    try:
        mpp = float(properties.get(key) or 0.0)
    except (TypeError, ValueError):
        return None
    return mpp if mpp > 0 else None


def to_rgb(pixels: np.ndarray) -> np.ndarray:
    """RGB uint8: grey is repeated, alpha composited on white as scanners show empty glass."""
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.shape[2] in (1, 2):  # grey, grey + alpha
        pixels = np.concatenate([np.repeat(pixels[..., :1], 3, axis=2), pixels[..., 1:]], axis=2)
    if pixels.shape[2] == 4:
        alpha = pixels[..., 3:4].astype(np.float32) / 255.0
        rgb = pixels[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        return rgb.round().astype(np.uint8)
    return np.ascontiguousarray(pixels[..., :3], dtype=np.uint8)
