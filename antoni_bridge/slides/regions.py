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

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon, box, mapping, shape

from antoni_bridge.errors import BridgeError

Polygonal = Polygon | MultiPolygon
MAX_REGION_VERTICES = 100_000  # a detailed brush annotation of a whole section has tens of thousands
MAX_REGION_CROSSINGS = 10_000  # repairing an outline costs about the square of its self-crossings
_CROSSING_BATCH = 4096  # outline segments tested at a time, so counting stops soon after the limit


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
        """A region from a GeoJSON geometry; an outline that crosses itself is repaired (its lobes
        united), within bounds on its size so that no region can keep a worker busy for long."""
        try:
            geom = shape(geometry)
        except Exception:  # shapely raises several types for malformed coordinates
            raise BridgeError(
                "The region geometry is malformed.",
                "send a GeoJSON Polygon or MultiPolygon of [x, y] level-0 pixel positions (export it from QuPath)",
            ) from None
        geom = _repaired(geom)
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


def clip_to_slide(region: Region, width: float, height: float) -> Region:
    """The part of `region` on a `width` x `height` slide: the same region when it lies inside, a clipped
    copy when it reaches beyond an edge, and a BridgeError when none of it is on the slide (one rule for
    the daemon, the CLI and the desk)."""
    if shapely.contains(box(0, 0, width, height), region.geometry):
        return region
    inside = _polygonal_part(shapely.intersection(region.geometry, box(0, 0, width, height)))
    if inside is None or inside.is_empty or inside.area <= 0:
        x0, y0, x1, y1 = region.bounds
        raise BridgeError(
            f"The region{f' {region.name!r}' if region.name else ''} ({x0:.0f},{y0:.0f})-({x1:.0f},{y1:.0f}) "
            f"lies outside the slide ({width:.0f}x{height:.0f} px).",
            "region coordinates are level-0 pixels of this slide; was it drawn on another image?",
        )
    return Region(inside, region.name)


def _repaired(geom: shapely.Geometry) -> shapely.Geometry:
    """A valid geometry, refused with a sentence when too large to repair quickly."""
    vertices = shapely.get_num_coordinates(geom)
    if vertices > MAX_REGION_VERTICES:
        raise BridgeError(
            f"The region has {vertices:,} vertices; the limit is {MAX_REGION_VERTICES:,}.",
            "simplify the annotation (QuPath: Objects > Annotations > Simplify shape)",
        )
    if geom.is_valid:
        return geom
    if _crossings_exceed(geom, MAX_REGION_CROSSINGS):
        raise BridgeError(
            f"The region's outline crosses itself more than {MAX_REGION_CROSSINGS:,} times.",
            "draw the region again as a simple outline, or simplify it in QuPath",
        )
    return shapely.make_valid(geom, method="structure")


def _crossings_exceed(geom: shapely.Geometry, limit: int) -> bool:
    """Whether the outline's segments cross one another more than `limit` times (counted in batches
    that stop once past the limit, so a tangle costs little to refuse)."""
    rings = shapely.get_rings(shapely.get_parts(geom))
    segments = [np.stack([c[:-1], c[1:]], axis=1) for c in map(shapely.get_coordinates, rings) if len(c) > 1]
    if not segments:
        return False
    lines = shapely.linestrings(np.concatenate(segments))
    tree, found = shapely.STRtree(lines), 0
    for start in range(0, len(lines), _CROSSING_BATCH):
        found += tree.query(lines[start : start + _CROSSING_BATCH], predicate="crosses").shape[1]
        if found > 2 * limit:  # each crossing is found from both of its segments
            return True
    return False


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
