"""Batch over QuPath projects through paquo. paquo runs QuPath's own classes, so the round trip runs
only where a QuPath installation is found (PAQUO_QUPATH_DIR or paquo's search) and is skipped with the
reason otherwise; the sentence a user gets without QuPath is tested everywhere."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from antoni_bridge.slides.demo import DemoLayout
from tests.conftest import run_cli

MAKE_PROJECT = """
import sys
from pathlib import Path
from shapely.geometry import box
from paquo.classes import QuPathPathClass
from paquo.projects import QuPathProject

with QuPathProject(Path(sys.argv[1]), mode="x") as project:
    for slide in sys.argv[2:]:
        entry = project.add_image(slide)
        tumour = entry.hierarchy.add_annotation(roi=box(1500, 1500, 4000, 4000), path_class=QuPathPathClass("Tumor"))
        tumour.name = "tumour"
"""

READ_PROJECT = """
import json, sys
from paquo.projects import QuPathProject

with QuPathProject(sys.argv[1], mode="r") as project:
    print(json.dumps([
        {"metadata": dict(entry.metadata),
         "annotations": {a.name: a.description for a in entry.hierarchy.annotations}}
        for entry in project.images
    ]))
"""


def _qupath_missing() -> str | None:
    """Why the paquo path cannot be tested here, or None when a QuPath installation is found."""
    try:
        from paquo._config import settings, to_kwargs
        from paquo.jpype_backend import find_qupath
    except ImportError:
        return "paquo is not installed (pip install antoni-bridge[qupath])"
    try:
        find_qupath(**to_kwargs(settings))
    except (ValueError, OSError) as exc:
        return f"no QuPath installation for paquo ({exc}); set PAQUO_QUPATH_DIR to test the project route"
    return None


def _paquo(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def test_without_qupath_the_user_gets_one_sentence_and_the_geojson_route(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "project.qpproj").write_text('{"version": "0.6.0", "images": []}')
    (tmp_path / "no-qupath-here").mkdir()
    result = run_cli(
        "batch", str(project), "--question", "Q?", "--out", str(tmp_path / "answers.csv"),
        env={"PAQUO_QUPATH_DIR": str(tmp_path / "no-qupath-here")},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "error: paquo found no QuPath installation, so the project cannot be read." in result.stderr
    assert "PAQUO_QUPATH_DIR" in result.stderr and "Export objects as GeoJSON" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_project_gets_its_answers_in_a_copy_or_in_place_after_a_backup(
    tmp_path: Path, demo_40x: tuple[Path, DemoLayout]
) -> None:
    reason = _qupath_missing()
    if reason:
        pytest.skip(reason)
    gone = tmp_path / "gone.svs"
    shutil.copy(demo_40x[0], gone)
    project = tmp_path / "project"
    _paquo(MAKE_PROJECT, str(project), str(demo_40x[0]), str(gone))
    gone.unlink()  # a slide moved away since it was added to the project
    before = _digest(project)
    ask = ("--question", "What organ is this?", "--local", "--demo", "--max-new-tokens", "4")

    copy_run = run_cli("batch", str(project / "project.qpproj"), *ask, "--out", str(tmp_path / "copy" / "answers.csv"))
    assert copy_run.returncode == 0, copy_run.stderr
    assert "is missing" in copy_run.stdout  # the moved slide, reported per item
    assert _digest(project) == before, "without --in-place the project is not touched"
    first, moved = json.loads(_paquo(READ_PROJECT, str(tmp_path / "copy" / "answers-project")))
    assert first["annotations"]["tumour"].strip() and "demo weights" in first["annotations"]["tumour"]
    assert first["metadata"]["ANTONI question 1"] == "What organ is this?" and first["metadata"]["ANTONI answer 1"]
    assert "ANTONI answer 1" not in moved["metadata"]

    in_place = run_cli("batch", str(project), *ask, "--in-place", "--out", str(tmp_path / "in-place" / "answers.csv"))
    assert in_place.returncode == 0, in_place.stderr
    (backup,) = tmp_path.glob("project.backup-*")
    assert _digest(backup) == before
    first, _ = json.loads(_paquo(READ_PROJECT, str(project)))
    assert "demo weights" in first["annotations"]["tumour"]


def test_an_empty_project_is_one_sentence(tmp_path: Path) -> None:
    reason = _qupath_missing()
    if reason:
        pytest.skip(reason)
    _paquo(MAKE_PROJECT, str(tmp_path / "empty"))
    result = run_cli("batch", str(tmp_path / "empty"), "--question", "Q?", "--out", str(tmp_path / "answers.csv"))
    assert result.returncode == 2 and "holds no images" in result.stderr, result.stderr
