"""What a cohort is: a folder of slides, a manifest (CSV or Parquet) or a QuPath project -> cohort slides.

Each slide gets a unique output name (its stem; a hash of its path added when two slides share a stem).
A manifest row or project image that cannot be used carries its reason, so it is recorded as failed with
the others instead of stopping the run.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from antoni_bridge.batch.sources import SLIDE_SUFFIXES
from antoni_bridge.errors import BridgeError

MANIFEST_SUFFIXES = (".csv", ".parquet")
MANIFEST_COLUMNS = "path (required), region (GeoJSON geometry or a .geojson file; optional), case (optional)"


@dataclass(frozen=True)
class Target:
    """Something asked about on a slide: the whole slide (`id` "image") or one annotation of it."""

    id: str
    label: str
    region: dict[str, Any] | None = None  # GeoJSON geometry in level-0 pixels


@dataclass(frozen=True)
class CohortSlide:
    path: Path
    name: str  # unique in the cohort: the feature file is NAME.h5
    region: dict[str, Any] | None = None  # GeoJSON geometry: embed only this region
    case: str | None = None
    entry_id: str | None = None  # QuPath project entry
    annotations: tuple[Target, ...] = field(default=(), compare=False)
    problem: str | None = None  # why the slide cannot be embedded

    @property
    def label(self) -> str:
        return str(self.path)


def read_cohort(source: Path) -> list[CohortSlide]:
    """The slides of a folder, a manifest or a QuPath project, with unique names."""
    from antoni_bridge.batch.qupath_project import is_project

    if is_project(source):
        slides = _project_slides(source)
    elif source.is_dir():
        slides = _folder_slides(source)
    elif source.is_file() and source.suffix.lower() in MANIFEST_SUFFIXES:
        slides = _manifest_slides(source)
    elif source.exists():
        raise BridgeError(
            f"{source} is neither a folder of slides, a manifest nor a QuPath project.",
            f"give a folder, a .csv or .parquet manifest ({MANIFEST_COLUMNS}) or a project.qpproj",
        )
    else:
        raise BridgeError(f"No folder, manifest or QuPath project at {source}.", "check the path")
    return _named(slides)


def _folder_slides(folder: Path) -> list[CohortSlide]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".") and _is_slide(p.name))
    if not files:
        raise BridgeError(f"{folder} holds no slides.", f"slides are files ending in {', '.join(SLIDE_SUFFIXES)}")
    return [CohortSlide(p.resolve(), p.stem) for p in files]


def _is_slide(name: str) -> bool:
    return name.lower().endswith(SLIDE_SUFFIXES)


def _manifest_slides(manifest: Path) -> list[CohortSlide]:
    rows = _manifest_rows(manifest)
    if not rows:
        raise BridgeError(f"The manifest {manifest} lists no slides.", f"one row per slide: {MANIFEST_COLUMNS}")
    if "path" not in rows[0]:
        raise BridgeError(f"The manifest {manifest} has no `path` column.", f"its columns: {MANIFEST_COLUMNS}")
    return [_manifest_slide(manifest.parent, row) for row in rows]


def _manifest_rows(manifest: Path) -> list[dict[str, Any]]:
    try:
        if manifest.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(manifest).to_pylist()
        with manifest.open(encoding="utf-8-sig", newline="") as fh:
            return list(csv.DictReader(fh))
    except ImportError:
        from antoni_bridge.cohort.runtime import INSTALL_HINT

        raise BridgeError("Reading a Parquet manifest needs pyarrow.", INSTALL_HINT) from None
    except (OSError, ValueError, UnicodeDecodeError, csv.Error) as exc:
        raise BridgeError(f"Cannot read the manifest {manifest} ({exc}).", f"its columns: {MANIFEST_COLUMNS}") from None


def _manifest_slide(base: Path, row: dict[str, Any]) -> CohortSlide:
    path = (base / str(row.get("path") or "").strip()).resolve()
    case = str(row["case"]).strip() if row.get("case") not in (None, "") else None
    slide = CohortSlide(path, path.stem, case=case)
    if not path.is_file():
        return replace(slide, problem=f"The slide {path} is missing.")
    try:
        region = _region_of(base, row.get("region"))
    except BridgeError as exc:
        return replace(slide, problem=str(exc))
    return CohortSlide(path, path.stem, region, case)


def _region_of(base: Path, value: Any) -> dict[str, Any] | None:
    """A manifest's region cell: empty, GeoJSON text (a geometry or a feature), or a .geojson file."""
    from antoni_bridge.slides.regions import Region, read_geojson_region

    text = str(value or "").strip()
    if not text:
        return None
    if not text.startswith("{"):
        return read_geojson_region(base / text).to_geojson()
    try:
        geometry = json.loads(text)
    except ValueError:
        raise BridgeError("A region cell is not valid GeoJSON.", "give a geometry, a feature or a file") from None
    if isinstance(geometry, dict) and geometry.get("type") == "Feature":
        geometry = geometry.get("geometry")
    return Region.from_geojson_dict(geometry if isinstance(geometry, dict) else {}).to_geojson()


def _project_slides(source: Path) -> list[CohortSlide]:
    """Each project image, its area annotations as targets (what `cohort ask` asks about besides the image)."""
    from antoni_bridge.batch.qupath_project import read_images

    slides = []
    for image in read_images(source):
        path = image.slide.resolve() if image.slide else Path(image.name)
        targets = tuple(Target(a.id, a.label, a.feature.get("geometry")) for a in image.annotations)
        slide = CohortSlide(path, Path(image.name).stem, entry_id=image.entry_id, annotations=targets)
        slides.append(replace(slide, problem=image.problem) if image.problem else slide)
    return slides


def _named(slides: list[CohortSlide]) -> list[CohortSlide]:
    """Names made unique: a slide whose stem (or stem and region) another slide shares gets a short hash."""
    keys = [(s.name, json.dumps([str(s.path), s.region], sort_keys=True)) for s in slides]
    counts: dict[str, int] = {}
    for name, _ in keys:
        counts[name] = counts.get(name, 0) + 1
    named = []
    for slide, (name, identity) in zip(slides, keys, strict=True):
        if counts[name] > 1:
            name = f"{name}-{hashlib.sha256(identity.encode()).hexdigest()[:8]}"
        named.append(replace(slide, name=name))
    return named
