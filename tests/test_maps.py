"""Tile-value maps as files: QuPath tile objects in GeoJSON and a PNG over a real demo slide's overview.

The maps are shaped as the protocol's `explain` and `zero_shot` results (docs/protocol.md); what QuPath
reads of the GeoJSON (objectType, classification, measurements as a map, NaN as a string) follows its
GeoJSON reader (PathObjectTypeAdapters in qupath-core).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from shapely.geometry import shape

from antoni_bridge import maps
from antoni_bridge.errors import BridgeError
from antoni_bridge.slides.demo import DemoLayout
from antoni_bridge.slides.overview import MAX_SIDE
from antoni_bridge.slides.regions import read_geojson_features

TILE = 448  # 224 px at 0.5 um/px on a 0.25 um/px slide


def explain_done(values: list[float], columns: int = 3, origin: tuple[int, int] = (1000, 800)) -> dict:
    """An `explain` done as the protocol gives it: tiles on a regular grid from `origin`, two per group."""
    coords = [[origin[0] + (i % columns) * TILE, origin[1] + (i // columns) * TILE] for i in range(len(values))]
    return {"method": "occlusion", "tiles": len(values), "groups": (len(values) + 1) // 2, "tile_size": TILE,
            "coords": coords, "values": values, "group_of": [i // 2 for i in range(len(values))]}  # fmt: skip


def oklab_lightness(rgb: np.ndarray) -> np.ndarray:
    """OKLab L of sRGB colours: the check that the ramp's lightness rises, computed independently."""
    c = rgb / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    lms = linear @ np.array([[0.4122214708, 0.2119034982, 0.0883024619], [0.5363325363, 0.6806995451, 0.2817188376],
                             [0.0514459929, 0.1073969566, 0.6299787005]])  # fmt: skip
    return np.cbrt(lms) @ np.array([0.2104542553, 0.7936177850, -0.0040720468])


def test_the_ramp_rises_evenly_in_lightness_and_stays_in_srgb() -> None:
    rgb = maps.colours(np.linspace(0, 1, 256)).astype(np.float64)
    lightness = oklab_lightness(rgb)
    assert np.all(np.diff(lightness) >= 0), "darker to lighter all the way: the order survives grey-scale"
    assert np.all(np.diff(lightness[::4]) > 0), "(neighbours may round to the same 8-bit colour)"
    steps = np.diff(lightness[::32])
    assert steps.max() / steps.min() < 1.3, "equal steps in value are near-equal steps in lightness"
    assert lightness[0] == pytest.approx(maps.LIGHTNESS[0], abs=0.01)
    assert lightness[-1] == pytest.approx(maps.LIGHTNESS[1], abs=0.01)


def test_geojson_is_qupath_tiles_with_the_value_as_a_measurement(tmp_path: Path) -> None:
    values = [0.1, -0.2, 2.5, 0.0, float("nan"), 1.0]
    tile_map = maps.evidence_map(explain_done(values))
    path = maps.write_geojson(tile_map, tmp_path / "evidence.geojson")
    text = path.read_text(encoding="utf-8")
    assert "NaN" in text and ": NaN" not in text, "NaN as QuPath writes it: a string (its Gson rejects bare NaN)"
    collection = json.loads(text)
    features = collection["features"]
    assert collection["type"] == "FeatureCollection" and len(features) == len(values)
    assert len(read_geojson_features(path)) == len(values), "the project's own QuPath reader takes it"
    for feature, (x, y) in zip(features, tile_map.coords, strict=True):
        properties = feature["properties"]
        assert properties["objectType"] == "tile"
        assert properties["classification"]["name"] == "ANTONI evidence", "one class: hidden or deleted at once"
        assert len(properties["classification"]["color"]) == 3
        polygon = shape(feature["geometry"])
        assert polygon.bounds == (x, y, x + TILE, y + TILE) and polygon.area == TILE * TILE
    measured = [f["properties"]["measurements"]["ANTONI evidence"] for f in features]
    assert measured[:4] == values[:4] and measured[4] == "NaN"
    assert [f["properties"]["measurements"]["ANTONI evidence group"] for f in features] == [0, 0, 1, 1, 2, 2]
    top = features[2]["properties"]["color"]
    assert top == maps.colours(np.array(1.0)).tolist(), "the largest value takes the ramp's top colour"
    assert not list(tmp_path.glob(".*tmp*")), "written through a temporary file"


def test_raster_is_one_pixel_per_tile_fainter_where_the_evidence_is_small() -> None:
    tile_map = maps.evidence_map(explain_done([0.0, 1.0, 0.5, 0.25], columns=2, origin=(224, 0)))
    rgba, origin = maps.raster(tile_map)
    assert rgba.shape == (2, 2, 4) and origin == (224.0, 0.0)
    assert rgba[0, 1, 3] > rgba[1, 0, 3] > rgba[1, 1, 3] > rgba[0, 0, 3] > 0
    gappy = maps.evidence_map({"tile_size": 10, "coords": [[0, 0], [20, 0]], "values": [1, 2], "group_of": []})
    rgba, _ = maps.raster(gappy)
    assert rgba.shape == (1, 3, 4) and rgba[0, 1, 3] == 0, "no tile: transparent"


def test_zero_shot_map_gives_each_tile_its_group_s_probability() -> None:
    done = {"labels": ["DAB", "H&E"], "probabilities": [0.7, 0.3], "map": {
        "tiles": 4, "groups": 2, "tile_size": TILE, "coords": [[0, 0], [TILE, 0], [0, TILE], [TILE, TILE]],
        "group_of": [0, 1, 1, 0], "probabilities": [[0.9, 0.1], [0.2, 0.8]]}}  # fmt: skip
    tile_map = maps.zero_shot_map(done, "H&E")
    assert tile_map.values.tolist() == [0.1, 0.8, 0.8, 0.1] and tile_map.name == "Prism zero-shot: H&E"
    feature = maps.to_geojson(tile_map)["features"][1]["properties"]
    assert feature["classification"]["name"] == "Prism zero-shot"
    assert feature["measurements"] == {"Prism zero-shot: H&E": 0.8, "Prism zero-shot group": 1}
    with pytest.raises(BridgeError, match="not one of the zero-shot labels"):
        maps.zero_shot_map(done, "PAS")
    with pytest.raises(BridgeError, match="no map"):
        maps.zero_shot_map({**done, "map": None}, "DAB")


def test_a_malformed_map_is_one_sentence() -> None:
    bad = explain_done([1.0, 2.0])
    bad["values"] = [1.0]
    with pytest.raises(BridgeError, match="malformed"):
        maps.evidence_map(bad)


def test_png_over_the_overview_of_a_real_slide(demo_40x: tuple[Path, DemoLayout], tmp_path: Path) -> None:
    slide = demo_40x[0]
    values = [0.0] * 8 + [3.0]  # the last tile holds all the evidence
    tile_map = maps.evidence_map(explain_done(values, origin=(1500, 1500)))
    path = maps.write_png(tile_map, slide, tmp_path / "evidence.png")
    picture = np.asarray(Image.open(path).convert("RGB")).astype(int)
    scale = MAX_SIDE / 8000  # the demo slide is 8000 px wide: the overview is 2000 px wide
    assert picture.shape == (round(6000 * scale), round(8000 * scale) + maps.bar_width(round(6000 * scale)), 3)
    x, y = tile_map.coords[-1] + TILE / 2
    hot = picture[round(y * scale), round(x * scale)]
    top = maps.colours(np.array(1.0)).astype(int)
    assert np.abs(hot - top).max() < 110, "the strongest tile is tinted with the ramp's top colour"
    unit = round(6000 * scale) // 60
    bar = picture[:, round(8000 * scale) + 2 * unit]
    assert (np.abs(bar - top).max(axis=1) < 8).any(), "the colour bar shows the top colour"
    assert not list(tmp_path.glob(".*tmp*"))
    with pytest.raises(BridgeError):
        maps.write_png(tile_map, tmp_path / "missing.svs", tmp_path / "x.png")
