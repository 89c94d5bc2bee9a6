"""What a batch is about: SOURCE (a slide, a folder of slides, a QuPath project) -> images -> items.

An item is one question about one target: a whole image, or one annotation of it. Inputs that cannot be
asked about (a missing slide, an annotation that is not an area, a class the image lacks) still become
items, carrying the reason, so they are reported with the others instead of stopping the run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from antoni_bridge.batch.geojson import Annotation, Choice, annotations_of, select
from antoni_bridge.errors import BridgeError
from antoni_bridge.slides.regions import Region, read_geojson_features

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide")
EXPORT_SUFFIXES = (".geojson", ".geojson.gz", ".geojson.zip")  # an export that names no slide is reported
SIDE_SUFFIXES = (".json", ".json.gz", ".json.zip", ".zip", ".gz")  # picked up only beside a slide of that stem


@dataclass
class Image:
    """One image of the source, with the annotations read for it."""

    name: str
    slide: Path | None
    annotations: list[Annotation] = field(default_factory=list)
    export: Path | None = None  # the GeoJSON its annotations came from
    entry_id: str | None = None  # its QuPath project entry
    problem: str | None = None  # why nothing about it can be asked

    @property
    def identity(self) -> str:
        return f"entry:{self.entry_id}" if self.entry_id else str(self.slide.resolve() if self.slide else self.name)


@dataclass(frozen=True)
class Item:
    image: Image
    target: str  # "image", an annotation id, or "class:NAME" for a class the image lacks
    label: str
    question: str
    question_number: int  # 1-based position of the question in the run's list
    annotation: Annotation | None = None
    region: dict[str, Any] | None = None  # GeoJSON geometry in level-0 pixels
    problem: str | None = None

    @property
    def key(self) -> str:
        """Stable across runs: what resuming matches done items by."""
        text = json.dumps([self.image.identity, self.target, self.question])
        return hashlib.sha256(text.encode()).hexdigest()[:20]


def read_questions(questions: list[str], file: Path | None) -> list[str]:
    """--question (repeatable) and --questions FILE (one per line; blank lines and # comments skipped)."""
    listed = [q.strip() for q in questions]
    if file is not None:
        try:
            lines = file.read_text(encoding="utf-8-sig").splitlines()
        except OSError as exc:
            raise BridgeError(f"Cannot read --questions {file} ({exc.strerror}).", "one question per line") from None
        listed += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    listed = [q for q in dict.fromkeys(listed) if q]
    if not listed:
        raise BridgeError("No question to ask.", 'add --question "..." or --questions FILE (one per line)')
    return listed


def slide_images(source: Path, geojson: Path | None, ignore: set[Path]) -> list[Image]:
    """A slide (annotations from --geojson or the export beside it), or every slide of a folder."""
    if source.is_dir():
        if geojson is not None:
            raise BridgeError(
                "--geojson names the annotations of one slide, but SOURCE is a folder.",
                "put each export beside its slide with the same name (slide.svs, slide.geojson)",
            )
        return _folder_images(source, ignore)
    if not source.is_file():
        raise BridgeError(f"No slide, folder or QuPath project at {source}.", "check the path")
    export = geojson if geojson is not None else _export_beside(source)
    return [_image(source.name, source, export)]


def _folder_images(folder: Path, ignore: set[Path]) -> list[Image]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.resolve() not in ignore)
    slides = [p for p in files if p.name.lower().endswith(SLIDE_SUFFIXES)]
    images = [_image(slide.name, slide, _export_beside(slide)) for slide in slides]
    claimed = {image.export for image in images}
    for export in files:
        if export.name.lower().endswith(EXPORT_SUFFIXES) and export not in claimed:
            problem = f"No slide beside {export.name} with the same name."
            images.append(Image(_base_name(export), None, export=export, problem=problem))
    if not images:
        raise BridgeError(f"{folder} holds no slides.", f"slides are files ending in {', '.join(SLIDE_SUFFIXES)}")
    return images


def _export_beside(slide: Path) -> Path | None:
    """QuPath names an export after the image, with or without the slide's own extension."""
    for base in (slide.stem, slide.name):
        for suffix in EXPORT_SUFFIXES + SIDE_SUFFIXES:
            candidate = slide.with_name(base + suffix)
            if candidate.is_file():
                return candidate
    return None


def _base_name(export: Path) -> str:
    name = export.name
    for suffix in sorted(EXPORT_SUFFIXES + SIDE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _image(name: str, slide: Path, export: Path | None) -> Image:
    image = Image(name, slide, export=export)
    if export is not None:
        try:
            image.annotations = annotations_of(read_geojson_features(export))
        except BridgeError as exc:
            image.problem = str(exc)
    return image


def items(images: list[Image], questions: list[str], choice: Choice) -> list[Item]:
    """Every question about every image as a whole and about each chosen annotation of it."""
    listed = []
    for image in images:
        chosen, missing_class = select(image.annotations, choice)
        for number, question in enumerate(questions, start=1):
            listed.append(Item(image, "image", image.name, question, number, problem=image.problem))
            if image.problem:
                continue
            if missing_class:
                target = f"class:{choice.class_name}"
                listed.append(Item(image, target, f"{image.name} [{target}]", question, number, problem=missing_class))
            listed += [_annotation_item(image, a, question, number) for a in chosen]
    return listed


def _annotation_item(image: Image, annotation: Annotation, question: str, number: int) -> Item:
    label = f"{image.name} [{annotation.label}]"
    geometry = annotation.feature.get("geometry")
    try:
        region = Region.from_geojson_dict(geometry if isinstance(geometry, dict) else {}, annotation.label)
    except BridgeError as exc:
        return Item(image, annotation.id, label, question, number, annotation, problem=str(exc))
    return Item(image, annotation.id, label, question, number, annotation, region.to_geojson())
