"""Tile-value maps (the evidence behind an answer, Prism's zero-shot label probabilities) as files a user
opens elsewhere: QuPath tile objects in GeoJSON with the value as a measurement, and a PNG heat map over
the slide's overview with a colour bar. The desk paints the same raster in the same colours, so a map
looks alike in every front end.

The colour map is a ramp in OKLab (Ottosson 2020) whose lightness rises evenly from dark violet to pale
yellow: equal steps in value are roughly equal steps in perceived colour, and the order survives a
grey-scale print, which a rainbow's does not.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from antoni_bridge.errors import BridgeError
from antoni_bridge.files import replacing, write_atomically

EVIDENCE = "ANTONI evidence"  # the measurement and the class of the evidence tiles in QuPath
ZERO_SHOT = "Prism zero-shot"
OVERLAY_ALPHA = 0.6  # how much of the slide a tile's colour covers, at the map's largest value
# The ramp's ends in OKLCh: lightness rises evenly, the hue turns from violet through blue and green to
# yellow, chroma stays where sRGB can show it.
LIGHTNESS, HUE_DEG, CHROMA = (0.30, 0.93), (300.0, 100.0), (0.13, 0.15)
RAMP_STEPS = 256


@dataclass(frozen=True)
class TileMap:
    """One value per tile: `coords` (N, 2) level-0 top-left corners, `values` (N,), tiles `tile_size`
    level-0 pixels wide; `name` is the measurement (and the legend's title), `kind` the QuPath class."""

    coords: np.ndarray
    tile_size: int
    values: np.ndarray
    name: str = EVIDENCE
    kind: str = EVIDENCE
    group_of: np.ndarray | None = None

    def value_range(self) -> tuple[float, float]:
        """The colour bar's ends: the smallest and largest finite value (equal ends widened so the bar has
        length)."""
        finite = self.values[np.isfinite(self.values)]
        low, high = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 0.0)
        return (low, high) if high > low else (low - 0.5, high + 0.5)

    def normalised(self) -> np.ndarray:
        """Values mapped to 0..1 over the colour bar's range (a value that is not a number to 0)."""
        low, high = self.value_range()
        return np.nan_to_num(np.clip((self.values - low) / (high - low), 0.0, 1.0), nan=0.0)


def evidence_map(done: dict[str, Any]) -> TileMap:
    """The map in an `explain` job's done (coords, tile_size, values, group_of)."""
    coords, values = _coords(done), np.asarray(done.get("values", []), dtype=np.float64)
    group_of = np.asarray(done.get("group_of", []), dtype=np.int64)
    _check_lengths(coords, values, group_of)
    return TileMap(coords, int(done["tile_size"]), values, group_of=group_of)


def zero_shot_map(done: dict[str, Any], label: str) -> TileMap:
    """One label's probability per tile, from a `zero_shot` done asked with `map`: each tile takes its group's."""
    grid = done.get("map")
    if not grid:
        raise BridgeError("The zero-shot result has no map.", "ask again with a map")
    if label not in done["labels"]:
        raise BridgeError(f"{label!r} is not one of the zero-shot labels.", "pick one of " + ", ".join(done["labels"]))
    column = done["labels"].index(label)
    group_of = np.asarray(grid["group_of"], dtype=np.int64)
    per_group = np.asarray(grid["probabilities"], dtype=np.float64)[:, column]
    coords = _coords(grid)
    _check_lengths(coords, group_of, group_of)
    return TileMap(coords, int(grid["tile_size"]), per_group[group_of], f"{ZERO_SHOT}: {label}", ZERO_SHOT, group_of)


def _coords(done: dict[str, Any]) -> np.ndarray:
    return np.asarray(done.get("coords", []), dtype=np.float64).reshape(-1, 2)


def _check_lengths(coords: np.ndarray, values: np.ndarray, group_of: np.ndarray) -> None:
    if len(coords) == 0 or len(values) != len(coords) or (len(group_of) and len(group_of) != len(coords)):
        raise BridgeError(
            f"The map is malformed ({len(coords)} tiles, {len(values)} values).",
            "the daemon and this front end disagree on the protocol: update both",
        )


# ---------------------------------------------------------------------------------------------- colours


def colours(t: np.ndarray) -> np.ndarray:
    """uint8 sRGB (..., 3) for values in 0..1 along the ramp (from a 256-step table)."""
    steps = np.round(np.clip(np.asarray(t, dtype=np.float64), 0.0, 1.0) * (RAMP_STEPS - 1)).astype(np.int64)
    return _RAMP[steps]


def _ramp(steps: int) -> np.ndarray:
    """The ramp's colours; where sRGB cannot show a colour, its chroma is lowered (lightness and hue kept,
    so the even rise in lightness stays exact)."""
    t = np.linspace(0.0, 1.0, steps)
    lightness = LIGHTNESS[0] + (LIGHTNESS[1] - LIGHTNESS[0]) * t
    hue = np.radians(HUE_DEG[0] + (HUE_DEG[1] - HUE_DEG[0]) * t)
    wanted = CHROMA[0] + (CHROMA[1] - CHROMA[0]) * t
    low, high = np.zeros(steps), wanted.copy()
    for _ in range(30):  # bisection on the largest chroma in gamut, up to the wanted one
        chroma = np.where(_in_gamut(lightness, wanted, hue), wanted, (low + high) / 2)
        inside = _in_gamut(lightness, chroma, hue)
        low, high = np.where(inside, chroma, low), np.where(inside, high, chroma)
    linear = _oklab_to_linear(lightness, low, hue)
    srgb = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * np.clip(linear, 0, 1) ** (1 / 2.4) - 0.055)
    return np.round(np.clip(srgb, 0.0, 1.0) * 255).astype(np.uint8)


def _in_gamut(lightness: np.ndarray, chroma: np.ndarray, hue: np.ndarray) -> np.ndarray:
    linear = _oklab_to_linear(lightness, chroma, hue)
    return np.all((linear >= -1e-6) & (linear <= 1 + 1e-6), axis=-1)


def _oklab_to_linear(lightness: np.ndarray, chroma: np.ndarray, hue: np.ndarray) -> np.ndarray:
    """OKLCh to linear sRGB (N, 3), with the published OKLab matrices."""
    lab = np.stack([lightness, chroma * np.cos(hue), chroma * np.sin(hue)], axis=-1)
    lms = (lab @ np.array([[1.0, 1.0, 1.0], [0.3963377774, -0.1055613458, -0.0894841775],
                           [0.2158037573, -0.0638541728, -1.2914855480]])) ** 3  # fmt: skip
    return lms @ np.array([[4.0767416621, -1.2684380046, -0.0041960863], [-3.3077115913, 2.6097574011, -0.7034186147],
                           [0.2309699292, -0.3413193965, 1.7076147010]])  # fmt: skip


_RAMP = _ramp(RAMP_STEPS)


def raster(tile_map: TileMap) -> tuple[np.ndarray, tuple[float, float]]:
    """The map as RGBA, one pixel per tile of its regular grid, and the level-0 corner of pixel (0, 0).

    Tiles with little evidence are fainter, so the slide shows through where nothing matters; pixels
    without a tile (or without a number) are transparent. One pixel per tile keeps a 15,000-tile map a
    small image to scale."""
    origin = tile_map.coords.min(axis=0)
    cells = np.round((tile_map.coords - origin) / tile_map.tile_size).astype(np.int64)
    cols, rows = cells.max(axis=0) + 1
    t = tile_map.normalised()
    rgba = np.zeros((rows, cols, 4), dtype=np.uint8)
    rgba[cells[:, 1], cells[:, 0], :3] = colours(t)
    alpha = np.where(np.isfinite(tile_map.values), np.round(255 * OVERLAY_ALPHA * (0.35 + 0.65 * t)), 0)
    rgba[cells[:, 1], cells[:, 0], 3] = alpha.astype(np.uint8)
    return rgba, (float(origin[0]), float(origin[1]))


# ---------------------------------------------------------------------------------------------- GeoJSON


def to_geojson(tile_map: TileMap) -> dict[str, Any]:
    """A FeatureCollection of tile objects as QuPath writes them (File > Import objects reads it): each a
    square in level-0 pixels, in one class so all can be hidden or deleted at once, coloured by its value,
    with the value as a measurement (and its group, where the map has groups)."""
    rgb = colours(tile_map.normalised()).tolist()
    class_colour = colours(np.array(1.0)).tolist()
    features = []
    for index, ((x, y), value) in enumerate(zip(tile_map.coords.tolist(), tile_map.values.tolist(), strict=True)):
        size = tile_map.tile_size
        ring = [[x, y], [x + size, y], [x + size, y + size], [x, y + size], [x, y]]
        measurements: dict[str, Any] = {tile_map.name: _json_number(value)}
        if tile_map.group_of is not None and len(tile_map.group_of):
            measurements[f"{tile_map.kind} group"] = int(tile_map.group_of[index])
        properties = {
            "objectType": "tile",
            "color": rgb[index],
            "classification": {"name": tile_map.kind, "color": class_colour},
            "measurements": measurements,
        }
        geometry = {"type": "Polygon", "coordinates": [ring]}
        features.append({"type": "Feature", "geometry": geometry, "properties": properties})
    return {"type": "FeatureCollection", "features": features}


def _json_number(value: float) -> float | str:
    """QuPath writes NaN and infinities as strings (its Gson rejects the bare words Python would write)."""
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def write_geojson(tile_map: TileMap, path: Path) -> Path:
    write_atomically(path, json.dumps(to_geojson(tile_map), allow_nan=False) + "\n")
    return path


# ---------------------------------------------------------------------------------------------- PNG


def write_png(tile_map: TileMap, slide_path: Path, path: Path, slide_mpp: float | None = None) -> Path:
    """The map over the slide's overview, with a colour bar beside it."""
    from antoni_bridge.slides.overview import thumbnail
    from antoni_bridge.slides.reader import Slide

    with Slide(slide_path, mpp=slide_mpp) as slide:
        image, scale = thumbnail(slide)
    picture = heat_picture(tile_map, image.convert("RGB"), scale)
    with replacing(path) as tmp:
        picture.save(tmp, format="PNG")
    return path


def heat_picture(tile_map: TileMap, overview: Image.Image, scale: float) -> Image.Image:
    """`overview` (thumbnail pixels per level-0 pixel: `scale`) with the map over it and a colour bar."""
    rgba, (x0, y0) = raster(tile_map)
    rows, cols = rgba.shape[:2]
    size = (max(1, round(cols * tile_map.tile_size * scale)), max(1, round(rows * tile_map.tile_size * scale)))
    tiles = Image.fromarray(rgba, "RGBA").resize(size, Image.Resampling.NEAREST)
    layer = Image.new("RGBA", overview.size, (0, 0, 0, 0))
    layer.paste(tiles, (round(x0 * scale), round(y0 * scale)))
    unit = max(12, overview.height // 60)  # the legend's text size, in proportion to the picture
    picture = Image.new("RGB", (overview.width + bar_width(overview.height), overview.height), (255, 255, 255))
    picture.paste(Image.alpha_composite(overview.convert("RGBA"), layer).convert("RGB"), (0, 0))
    _draw_colour_bar(picture, tile_map, overview.width, unit)
    return picture


def bar_width(height: int) -> int:
    """The colour bar's panel beside an overview `height` pixels high."""
    return 12 * max(12, height // 60)


def _draw_colour_bar(picture: Image.Image, tile_map: TileMap, left: int, unit: int) -> None:
    """A vertical bar, largest value at the top, with its ends and middle labelled and the map's name."""
    draw = ImageDraw.Draw(picture)
    try:
        font: ImageFont.ImageFont | ImageFont.FreeTypeFont = ImageFont.load_default(size=unit)
    except TypeError:  # Pillow 10.0 has one bitmap size only
        font = ImageFont.load_default()
    top, height = 4 * unit, max(5 * unit, min(30 * unit, picture.height - 6 * unit))
    x, width = left + unit, 2 * unit
    ramp = colours(np.linspace(1.0, 0.0, height))
    picture.paste(Image.fromarray(np.repeat(ramp[:, None, :], width, axis=1), "RGB"), (x, top))
    draw.rectangle([x, top, x + width - 1, top + height - 1], outline=(0, 0, 0))
    low, high = tile_map.value_range()
    for fraction in (0.0, 0.5, 1.0):
        y = top + round((1 - fraction) * (height - 1))
        draw.line([x + width, y, x + width + unit // 2, y], fill=(0, 0, 0))
        draw.text((x + width + unit, y - unit // 2), f"{low + fraction * (high - low):.3g}", fill=(0, 0, 0), font=font)
    for line, text in enumerate(_wrap(tile_map.name, 16)):
        draw.text((left + unit // 2, unit // 2 + round(1.3 * unit * line)), text, fill=(0, 0, 0), font=font)


def _wrap(text: str, width: int) -> list[str]:
    """At most two lines of about `width` characters (the legend's title)."""
    lines: list[str] = []
    for word in text.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines[:2]
