"""Regions of a slide: a rectangle or a (multi)polygon with holes, in level-0 pixel coordinates.

QuPath exports annotations as GeoJSON in exactly these coordinates, so a region drawn there can be
asked about here without conversion.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import shapely
from shapely.geometry import MultiPolygon, Polygon, box, mapping, shape

from antoni_bridge.errors import BridgeError

Polygonal = Polygon | MultiPolygon


@dataclass(frozen=True)
class Region:
    """A polygonal area of a slide in level-0 pixels, with an optional name."""

    geometry: Polygonal
    name: str | None = None

    @classmethod
    def rectangle(cls, x: float, y: float, width: float, height: float) -> Region:
        if not all(math.isfinite(v) for v in (x, y, width, height)):
            raise BridgeError(
                f"The region {x},{y},{width},{height} has a value that is not a number.",
                "give x,y,width,height as numbers",
            )
        if width <= 0 or height <= 0:
            raise BridgeError(
                f"The region {x},{y},{width},{height} is empty.",
                "give x,y,width,height with a positive width and height",
            )
        return cls(box(x, y, x + width, y + height), name=None)

    @classmethod
    def parse_rectangle(cls, text: str) -> Region:
        """`x,y,w,h` as typed on a command line."""
        try:
            x, y, w, h = (float(part) for part in text.split(","))
        except ValueError:
            raise BridgeError(
                f"Cannot read the region {text!r}.", "write it as x,y,width,height in level-0 pixels"
            ) from None
        return cls.rectangle(x, y, w, h)

    @classmethod
    def from_geojson_dict(cls, geometry: dict[str, Any], name: str | None = None) -> Region:
        try:
            geom = shapely.make_valid(shape(geometry))
        except Exception as exc:  # shapely raises several types for malformed coordinates
            raise BridgeError(f"The region geometry is malformed ({exc}).", "export it again from QuPath") from exc
        polygonal = _polygonal_part(geom)
        if polygonal is None or polygonal.is_empty or polygonal.area <= 0:
            raise BridgeError(
                f"The region{f' {name!r}' if name else ''} is not an area (a {geom.geom_type}).",
                "choose an area annotation (rectangle, ellipse, polygon, brush), not points or lines",
            )
        return cls(polygonal, name=name)

    def to_geojson(self) -> dict[str, Any]:
        return dict(mapping(self.geometry))

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return tuple(self.geometry.bounds)  # type: ignore[return-value]

    def key(self) -> str:
        """A stable text form, for cache keys: the geometry's WKT rounded to 1/100 pixel."""
        return shapely.to_wkt(self.geometry, rounding_precision=2, trim=True)


def read_geojson_region(path: str | os.PathLike[str], name: str | None = None) -> Region:
    """The area annotation named `name` (or the only one) from a QuPath GeoJSON export."""
    path = Path(path)
    areas = _area_features(path)
    if name is not None:
        matches = [f for f in areas if name in annotation_names(f)]
        if not matches:
            known = {n for f in areas for n in annotation_names(f)}
            raise BridgeError(
                f"No annotation named {name!r} in {path.name}.",
                f"names there: {name_listing(known) or 'none (the annotations are unnamed)'}",
            )
        if len(matches) > 1:
            raise BridgeError(
                f"{len(matches)} annotations in {path.name} are named {name!r}.", "give them distinct names"
            )
        return Region.from_geojson_dict(matches[0]["geometry"], name=name)
    if len(areas) > 1:
        known = {n for f in areas for n in annotation_names(f)}
        raise BridgeError(
            f"{path.name} holds {len(areas)} area annotations; say which one.",
            f"add --name NAME ({name_listing(known) or 'the annotations are unnamed: name them in QuPath'})",
        )
    return _region_of(areas[0])


def read_geojson_regions(path: str | os.PathLike[str]) -> list[Region]:
    """Every area annotation of a QuPath GeoJSON export, for a front end that lets the user pick one."""
    return [_region_of(feature) for feature in _area_features(Path(path))]


def _area_features(path: Path) -> list[dict[str, Any]]:
    """The area annotations of a GeoJSON file (at least one), or a BridgeError saying why there are none."""
    features = [f for f in read_geojson_features(path) if isinstance(f.get("geometry"), dict)]
    areas = [f for f in features if f["geometry"].get("type") in ("Polygon", "MultiPolygon")]
    annotations = [f for f in areas if feature_properties(f).get("objectType", "annotation") == "annotation"]
    areas = annotations or areas  # exports of all objects also hold detections and cells
    if not areas:
        raise BridgeError(f"{path.name} holds no area annotation.", "draw and export an area annotation")
    return areas


def _region_of(feature: dict[str, Any]) -> Region:
    names = annotation_names(feature)
    return Region.from_geojson_dict(feature["geometry"], name=names[0] if names else None)


def read_geojson_features(path: Path) -> list[dict[str, Any]]:
    """Every feature of a QuPath export, whichever form QuPath wrote: a FeatureCollection, a bare array or
    one Feature, as .geojson/.json or compressed (.gz, or a .zip of such files)."""
    try:
        if path.suffix.lower() == ".zip":
            with zipfile.ZipFile(path) as archive:
                members = [m for m in archive.namelist() if m.lower().endswith((".geojson", ".json"))]
                return [f for m in members for f in _features(_parse_geojson(archive.read(m)))]
        raw = gzip.decompress(path.read_bytes()) if path.suffix.lower() == ".gz" else path.read_bytes()
        return _features(_parse_geojson(raw))
    except FileNotFoundError:
        raise BridgeError(f"No GeoJSON file at {path}.", "check the path of the exported annotations") from None
    except (OSError, EOFError, zipfile.BadZipFile, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BridgeError(
            f"{path.name} is not readable GeoJSON ({exc}).",
            "export the annotations again from QuPath (File > Export objects as GeoJSON)",
        ) from exc


def _parse_geojson(raw: bytes) -> Any:
    return json.loads(raw.decode("utf-8-sig"), object_pairs_hook=_merge_repeated_keys)


def _merge_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """QuPath's writer can emit `metadata` twice in one object: keep the entries of both, not the last."""
    merged: dict[str, Any] = {}
    for key, value in pairs:
        if isinstance(merged.get(key), dict) and isinstance(value, dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def _features(data: Any) -> list[dict[str, Any]]:
    """FeatureCollection, a bare list of features, one Feature, or one bare geometry."""
    if isinstance(data, list):
        return [f for f in data if isinstance(f, dict)]
    if not isinstance(data, dict):
        return []
    if data.get("type") == "FeatureCollection":
        features = data.get("features")
        return [f for f in features if isinstance(f, dict)] if isinstance(features, list) else []
    if data.get("type") == "Feature":
        return [data]
    if "coordinates" in data:
        return [{"type": "Feature", "geometry": data, "properties": {}}]
    return []


def annotation_names(feature: dict[str, Any]) -> list[str]:
    """What a user may call an annotation: its name, its class, or its id."""
    props = feature_properties(feature)
    names = [props.get("name")]
    classification = props.get("classification")
    if isinstance(classification, dict):
        names.append(classification.get("name"))
    names.append(feature.get("id"))
    return [str(n) for n in names if n not in (None, "")]


def feature_properties(feature: dict[str, Any]) -> dict[str, Any]:
    props = feature.get("properties")
    return props if isinstance(props, dict) else {}


def name_listing(names: set[str], limit: int = 12) -> str:
    """Some of the names, for a hint; exports can hold thousands of objects."""
    ordered = sorted(names)
    more = f" and {len(ordered) - limit} more" if len(ordered) > limit else ""
    return ", ".join(ordered[:limit]) + more


def _polygonal_part(geom: shapely.Geometry) -> Polygonal | None:
    if isinstance(geom, Polygon | MultiPolygon):
        return geom
    parts = [g for g in getattr(geom, "geoms", []) if isinstance(g, Polygon | MultiPolygon)]
    if not parts:
        return None
    union = shapely.union_all(parts)
    return union if isinstance(union, Polygon | MultiPolygon) else None
