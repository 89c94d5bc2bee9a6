"""Annotations of QuPath GeoJSON exports as batch targets, and answers written as GeoJSON QuPath imports.

Exports are read by `slides.regions` in every form QuPath writes; here they become annotations (an
"All objects" export also holds detections, cells and tiles: only `objectType` "annotation" counts).
QuPath matches `objectType` case-sensitively on import, so it is always written lower-case, and a
description lives in the object's metadata under `ANNOTATION_DESCRIPTION`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from antoni_bridge.errors import BridgeError
from antoni_bridge.files import write_atomically
from antoni_bridge.slides.regions import annotation_names, feature_properties, name_listing

ANNOTATION = "annotation"
DESCRIPTION_KEY = "ANNOTATION_DESCRIPTION"


@dataclass(frozen=True)
class Annotation:
    """One annotation as exported; `feature` is kept whole so that writing back loses none of it."""

    id: str  # QuPath's UUID, or the position in the export when it has none
    label: str  # what a person calls it: name, class or id
    classes: tuple[str, ...]
    feature: dict[str, Any] = field(compare=False, repr=False)


@dataclass(frozen=True)
class Choice:
    """Which annotations of an image are asked about: all, none, or those of one class."""

    kind: str  # "all", "none" or "class"
    class_name: str = ""

    @classmethod
    def parse(cls, text: str) -> Choice:
        if text in ("all", "none"):
            return cls(text)
        kind, _, name = text.partition(":")
        if kind != "class" or not name.strip():
            raise BridgeError(f"Cannot read --annotations {text!r}.", "use all, none or class:NAME (e.g. class:Tumor)")
        return cls("class", name.strip())


def annotations_of(features: list[dict[str, Any]]) -> list[Annotation]:
    """The annotations among exported objects, in export order."""
    found = []
    for position, feature in enumerate(features):
        props = feature_properties(feature)
        if str(props.get("objectType", ANNOTATION)).lower() != ANNOTATION:
            continue
        ident = str(feature.get("id") or f"#{position + 1}")
        names = annotation_names(feature)
        found.append(Annotation(ident, names[0] if names else ident, _classes(props), feature))
    return found


def select(annotations: list[Annotation], choice: Choice) -> tuple[list[Annotation], str | None]:
    """The chosen annotations, and a sentence when a class was asked for that the image does not have."""
    if choice.kind == "none":
        return [], None
    if choice.kind == "all":
        return annotations, None
    chosen = [a for a in annotations if choice.class_name in a.classes]
    if chosen:
        return chosen, None
    known = {c for a in annotations for c in a.classes}
    return [], f"No annotation of class {choice.class_name!r} here (classes: {name_listing(known) or 'none'})."


def _classes(props: dict[str, Any]) -> tuple[str, ...]:
    """A class by its full name ("Tumor: Positive") and by each part (QuPath 0.5+ writes `names`)."""
    classification = props.get("classification")
    if not isinstance(classification, dict):
        return ()
    parts = [str(n) for n in classification.get("names") or [] if n]
    name = classification.get("name") or ": ".join(parts)
    return tuple(dict.fromkeys([str(name), *parts])) if name else ()


def answered_feature(annotation: Annotation, description: str, metadata: dict[str, str]) -> dict[str, Any]:
    """The exported feature with the answers in its metadata, as QuPath reads it back."""
    feature = json.loads(json.dumps(annotation.feature))  # a deep copy; the export itself stays as it was
    props = feature.setdefault("properties", {})
    props["objectType"] = ANNOTATION
    props["metadata"] = {**(props.get("metadata") or {}), **metadata, DESCRIPTION_KEY: description}
    return feature


def write_feature_collection(path: Path, features: list[dict[str, Any]]) -> None:
    """RFC 8259 JSON: QuPath's Gson rejects bare NaN, so non-finite numbers are written as QuPath does."""
    collection = {"type": "FeatureCollection", "features": _finite(features)}
    write_atomically(path, json.dumps(collection, ensure_ascii=False, allow_nan=False))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
