"""`ask --evidence`: the answer, then the daemon's `explain` job on it, its figures one line each, and the
map written as QuPath tile objects and a PNG; bad options refused before anything is asked."""

from __future__ import annotations

from pathlib import Path

from antoni_bridge.slides.demo import DemoLayout
from tests.conftest import run_cli


def test_bad_evidence_options_are_one_sentence_before_asking(demo_40x: tuple[Path, DemoLayout], tmp_path: Path) -> None:
    slide = str(demo_40x[0])
    features = str(tmp_path / "latents.h5")
    out = str(tmp_path / "map.geojson")
    cases = {
        "local": ([slide, "Q", "--evidence", out, "--local", "--demo"], "--evidence runs the daemon's explain job"),
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
