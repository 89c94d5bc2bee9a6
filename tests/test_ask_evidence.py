"""`ask --evidence`: the answer, then the daemon's `explain` job on it, its figures one line each, and the
map written as QuPath tile objects and a PNG; bad options refused before anything is asked."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from antoni_bridge.slides.demo import DemoLayout
from antoni_bridge.slides.regions import read_geojson_features
from tests.conftest import run_cli

REGION = "2000,2000,1400,1400"  # level-0 px: on the demo slide's DAB piece, a few tiles (a quick map)


def test_bad_evidence_options_are_one_sentence_before_asking(demo_40x: tuple[Path, DemoLayout], tmp_path: Path) -> None:
    slide = str(demo_40x[0])
    features = str(tmp_path / "latents.h5")
    out = str(tmp_path / "map.geojson")
    cases = {
        "choices": ([slide, "Q", "--evidence", out, "--choices", "A=a,B=b"], "not a multiple-choice score"),
        "png of features": (["--features", features, "Q", "--evidence-png", out], "a features file has none"),
        "same file": ([slide, "Q", "--evidence", out, "--evidence-png", out], "name the same file"),
        "over the slide": ([slide, "Q", "--evidence", slide], "is one of the inputs"),
    }
    for label, (args, message) in cases.items():
        result = run_cli("ask", *args)
        assert result.returncode == 2, f"{label}: {result.stderr}"
        assert "Traceback" not in result.stderr and message in result.stderr, f"{label}: {result.stderr}"
    assert not list(tmp_path.iterdir()), "nothing written"


def test_ask_with_evidence_through_the_daemon_writes_both_files(
    patient_daemon: Path, demo_40x: tuple[Path, DemoLayout], tmp_path: Path
) -> None:
    geojson, png = tmp_path / "map.geojson", tmp_path / "map.png"
    result = run_cli(
        "ask", str(demo_40x[0]), "Is there DAB staining?", "--max-new-tokens", "12", "--region", REGION,
        "--evidence", str(geojson), "--evidence-png", str(png),
        env={"ANTONI_BRIDGE_CONNECTION_FILE": str(patient_daemon)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert sum(line.startswith("Image reliance: ") for line in lines) == 1, result.stdout
    assert sum(line.startswith("Faithfulness: deletion area ") for line in lines) == 1, result.stdout
    assert f"written to {geojson} and {png}" in result.stdout
    features = read_geojson_features(geojson)
    assert features and {f["properties"]["objectType"] for f in features} == {"tile"}
    assert all(isinstance(f["properties"]["measurements"]["ANTONI evidence"], float) for f in features)
    assert Image.open(png).format == "PNG"


def test_ask_with_evidence_in_this_process(demo_40x: tuple[Path, DemoLayout], tmp_path: Path) -> None:
    geojson = tmp_path / "map.geojson"
    result = run_cli(
        "ask", str(demo_40x[0]), "Is there DAB staining?", "--max-new-tokens", "12", "--region", REGION,
        "--local", "--demo", "--evidence", str(geojson), "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    evidence = record["evidence"]
    assert evidence["method"] == "occlusion" and evidence["files"] == {"geojson": str(geojson)}
    assert {"score", "flagged"} <= set(evidence["reliance"]) and {"score", "flagged"} <= set(record["reliance"])
    assert len(read_geojson_features(geojson)) == evidence["tiles"]
