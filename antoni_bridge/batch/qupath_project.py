"""QuPath projects (.qpproj) through paquo: images and annotations in, answers back into the project.

paquo drives QuPath's own Java classes, so it needs a QuPath installation (PAQUO_QUPATH_DIR, a
.paquo.toml, or paquo's search of the usual install folders). Without one the user gets one sentence
and the GeoJSON route. Answers go into a copy of the project unless --in-place, which first backs the
project folder up; the project the user opened in QuPath is never changed otherwise.
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

from antoni_bridge.batch.files import backup_folder
from antoni_bridge.batch.geojson import annotations_of
from antoni_bridge.batch.results import answer_metadata, description
from antoni_bridge.batch.sources import Image
from antoni_bridge.errors import BridgeError

EXPORT_ROUTE = (
    "export each image's annotations (File > Export objects as GeoJSON) next to its slide with the same "
    "name and run batch on the slide folder"
)
GEOJSON_ROUTE = f"set PAQUO_QUPATH_DIR to your QuPath folder; or, without QuPath here, {EXPORT_ROUTE}"


def is_project(source: Path) -> bool:
    return source.suffix == ".qpproj" or (source / "project.qpproj").is_file()


def _project_class():  # -> paquo.projects.QuPathProject
    """paquo's project class, once QuPath is known to be there: paquo starts QuPath's JVM on import."""
    try:
        from paquo._config import settings, to_kwargs
        from paquo.jpype_backend import find_qupath
    except ImportError:
        raise BridgeError(
            "Reading QuPath projects needs paquo, which is not installed.",
            f'pip install "antoni-bridge[qupath]"; or {EXPORT_ROUTE}',
        ) from None
    try:
        find_qupath(**to_kwargs(settings))
    except (ValueError, OSError):
        raise BridgeError("paquo found no QuPath installation, so the project cannot be read.", GEOJSON_ROUTE) from None
    try:
        from paquo.projects import QuPathProject
    except Exception as exc:  # JPype and the JVM fail in many ways
        raise BridgeError(f"paquo could not start QuPath ({exc}).", GEOJSON_ROUTE) from exc
    return QuPathProject


def read_images(source: Path) -> list[Image]:
    """Every image of the project with its annotations (as QuPath's own GeoJSON), opened read-only."""
    if not source.exists():
        raise BridgeError(f"No QuPath project at {source}.", "give the project.qpproj file or its folder")
    project_class = _project_class()
    from paquo.images import ImageProvider  # only now: importing it starts QuPath's JVM

    with project_class(source, mode="r") as project:
        images = []
        for entry in project.images:
            image = Image(str(entry.image_name), None, entry_id=str(entry.entry_id))
            try:
                image.slide = Path(ImageProvider.path_from_uri(entry.uri))
            except Exception as exc:  # paquo raises several types for server URIs it cannot map to a file
                image.problem = f"The image's location cannot be read as a file ({exc})."
            if image.slide is not None and not image.slide.is_file():
                image.problem = f"The slide {image.slide} is missing."
            image.annotations = annotations_of([a.to_geojson() for a in entry.hierarchy.annotations])
            images.append(image)
    if not images:
        raise BridgeError(f"The project {source} holds no images.", "add images to it in QuPath, then run again")
    return images


def check_copy_target(copy_to: Path) -> None:
    """The copy of the project is replaced at each run: only when it is one (never a folder of the user's)."""
    if copy_to.exists() and not (copy_to / "project.qpproj").is_file():
        raise BridgeError(
            f"{copy_to} exists and is not a project copy from an earlier batch; it is left alone.",
            "move it away, or choose another --out",
        )


def write_answers(source: Path, records: list[dict[str, Any]], copy_to: Path, in_place: bool) -> Path:
    """Answers into annotation descriptions and metadata, and whole-image answers into entry metadata, in a
    copy of the project folder (or in place, after a backup). Returns the project folder written."""
    folder = source if source.is_dir() else source.parent
    if in_place:
        backup_folder(folder)
        target = folder
    else:
        check_copy_target(copy_to)
        if copy_to.exists():
            shutil.rmtree(copy_to)  # our own copy from the last run: the answers are rewritten whole
        shutil.copytree(folder, copy_to)
        target = copy_to
    answered: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r["status"] == "done":
            answered[r["entry_id"]][r["annotation_id"] or "image"].append(r)
    with _project_class()(target, mode="r+") as project:  # saved on leaving the block
        for entry in project.images:
            by_target = answered.get(str(entry.entry_id), {})
            if "image" in by_target:
                for key, value in answer_metadata(by_target["image"]).items():
                    entry.metadata[key] = value
            for annotation in entry.hierarchy.annotations:
                _write_annotation(annotation, by_target.get(str(annotation.to_geojson().get("id")), []))
    return target


def _write_annotation(annotation: Any, answered: list[dict[str, Any]]) -> None:
    if not answered:
        return
    annotation.description = description(answered)
    metadata = getattr(annotation.java_object, "getMetadata", None)  # QuPath 0.5+: every object's metadata map
    if metadata is not None:
        for key, value in answer_metadata(answered).items():
            metadata().put(key, value)
