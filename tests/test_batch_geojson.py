"""Batch GeoJSON without QuPath: every export form QuPath writes is read, and the answers written back
are GeoJSON QuPath imports. Crafted files, no model."""

from __future__ import annotations

import gzip
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest

from antoni_bridge.batch.geojson import Choice, annotations_of, answered_feature, select, write_feature_collection
from antoni_bridge.batch.results import ResultsLog
from antoni_bridge.errors import BridgeError
from antoni_bridge.slides.regions import read_geojson_features

SQUARE = {"type": "Polygon", "coordinates": [[[100, 100], [900, 100], [900, 900], [100, 900], [100, 100]]]}
TUMOR = {
    "type": "Feature",
    "id": "0d1c9a52-7f3e-4c1e-9a0b-2f6f2b1c0001",
    "geometry": SQUARE,
    "properties": {
        "objectType": "annotation",
        "name": "first",
        "classification": {"names": ["Tumor", "Positive"], "color": [200, 0, 0]},
        "isLocked": False,
        "measurements": {"Area": 640000.0, "Mean": "NaN", "Max": "Infinity"},
    },
}
STROMA = {
    "type": "Feature",
    "id": "0d1c9a52-7f3e-4c1e-9a0b-2f6f2b1c0002",
    "geometry": SQUARE,
    "properties": {"objectType": "annotation", "classification": {"name": "Stroma", "color": [0, 200, 0]}},
}
CELL = {"type": "Feature", "id": "c1", "geometry": SQUARE, "properties": {"objectType": "cell"}}
DETECTION = {"type": "Feature", "id": "d1", "geometry": SQUARE, "properties": {"objectType": "detection"}}


def _collection(*features: dict[str, Any]) -> str:
    return json.dumps({"type": "FeatureCollection", "features": list(features)})


def _write_form(folder: Path, form: str) -> Path:
    """The export forms of File > Export objects as GeoJSON."""
    everything = [TUMOR, CELL, STROMA, DETECTION]
    if form == "feature-collection":
        path = folder / "slide.geojson"
        path.write_text(_collection(*everything))
    elif form == "bare-array":
        path = folder / "slide.json"
        path.write_text(json.dumps(everything))
    elif form == "single-feature":
        path = folder / "slide.geojson"
        path.write_text(json.dumps(TUMOR))
    elif form == "gz":
        path = folder / "slide.geojson.gz"
        path.write_bytes(gzip.compress(_collection(*everything).encode()))
    else:
        path = folder / "slide.zip"
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("slide.geojson", _collection(*everything))
    return path


@pytest.mark.parametrize("form", ["feature-collection", "bare-array", "single-feature", "gz", "zip"])
def test_every_export_form_yields_its_annotations_only(tmp_path: Path, form: str) -> None:
    annotations = annotations_of(read_geojson_features(_write_form(tmp_path, form)))
    expected = [TUMOR] if form == "single-feature" else [TUMOR, STROMA]  # cells and detections filtered out
    assert [a.id for a in annotations] == [f["id"] for f in expected]
    assert annotations[0].label == "first" and annotations[0].classes == ("Tumor: Positive", "Tumor", "Positive")


def test_repeated_metadata_keys_are_merged_and_nan_strings_kept(tmp_path: Path) -> None:
    path = tmp_path / "dup.geojson"
    feature = json.dumps(TUMOR)[:-2]  # ... "NaN", "Max": "Infinity"}}  -> append two metadata keys
    path.write_text(feature + ', "metadata": {"ANNOTATION_DESCRIPTION": "old"}, "metadata": {"reviewer": "AB"}}}')
    (annotation,) = annotations_of(read_geojson_features(path))
    props = annotation.feature["properties"]
    assert props["metadata"] == {"ANNOTATION_DESCRIPTION": "old", "reviewer": "AB"}
    assert props["measurements"]["Mean"] == "NaN"


def test_answers_written_back_read_as_qupath_annotations(tmp_path: Path) -> None:
    source = tmp_path / "export.geojson"
    shouting = {**STROMA, "properties": {**STROMA["properties"], "objectType": "Annotation"}}
    bare_nan = {**TUMOR, "properties": {**TUMOR["properties"], "measurements": {"Mean": float("nan")}}}
    source.write_text(json.dumps([bare_nan, shouting]))  # Python's json writes the NaN bare, as some tools do
    before = source.read_bytes()
    annotations = annotations_of(read_geojson_features(source))
    out = tmp_path / "answers" / "slide.geojson"
    features = [
        answered_feature(a, f"answer {i}", {"ANTONI answer 1": f"answer {i}"}) for i, a in enumerate(annotations)
    ]
    write_feature_collection(out, features)

    def refuse(constant: str) -> None:
        raise ValueError(f"bare {constant}: QuPath's Gson would refuse the file")

    data = json.loads(out.read_text(), parse_constant=refuse)
    assert data["type"] == "FeatureCollection"
    props = [f["properties"] for f in data["features"]]
    assert [p["objectType"] for p in props] == ["annotation", "annotation"]  # QuPath matches it case-sensitively
    assert [p["metadata"]["ANNOTATION_DESCRIPTION"] for p in props] == ["answer 0", "answer 1"]
    assert (
        props[0]["measurements"]["Mean"] == "NaN"
        and props[0]["classification"] == TUMOR["properties"]["classification"]
    )
    assert [f["id"] for f in data["features"]] == [TUMOR["id"], STROMA["id"]]
    again = annotations_of(read_geojson_features(out))  # the written file is itself a readable export
    assert [a.id for a in again] == [a.id for a in annotations]
    assert source.read_bytes() == before


def test_annotation_choice_by_class_and_unknown_classes() -> None:
    annotations = annotations_of([TUMOR, STROMA, CELL])
    assert [a.id for a in select(annotations, Choice.parse("class:Tumor"))[0]] == [TUMOR["id"]]
    assert select(annotations, Choice.parse("none")) == ([], None)
    chosen, problem = select(annotations, Choice.parse("class:Necrosis"))
    assert chosen == [] and "Necrosis" in problem and "Stroma" in problem
    with pytest.raises(BridgeError, match="class:NAME"):
        Choice.parse("tumour")


def test_results_log_survives_a_torn_line_and_keeps_the_latest_record(tmp_path: Path) -> None:
    path = tmp_path / "answers.jsonl"
    path.write_text('{"key": "a", "status": "failed"}\n{"key": "a", "status": "done"}\n{"key": "b", "sta')
    log = ResultsLog(path)
    assert log.records == {"a": {"key": "a", "status": "done"}}
    log.append({"key": "b", "status": "done"})
    assert [json.loads(line)["key"] for line in path.read_text().splitlines()] == ["a", "a", "b"]
