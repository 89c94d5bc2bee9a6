"""`antoni-bridge batch` as users run it: a separate process over a folder of demo slides with QuPath
exports beside them, asking a real `serve --demo` daemon; resuming after an interruption; bad input."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from antoni_bridge.daemon.launch import start_daemon
from antoni_bridge.slides.demo import DemoLayout
from tests.conftest import run_cli

QUESTION = "What organ is this tissue from?"


def _square(x: int, y: int, size: int) -> dict:
    return {"type": "Polygon", "coordinates": [[[x, y], [x + size, y], [x + size, y + size], [x, y + size], [x, y]]]}


def _annotation(ident: str, geometry: dict, name: str | None = None, cls: str | None = None) -> dict:
    props: dict = {"objectType": "annotation"}
    if name:
        props["name"] = name
    if cls:
        props["classification"] = {"name": cls, "color": [200, 0, 0]}
    return {"type": "Feature", "id": ident, "geometry": geometry, "properties": props}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A real daemon with the demo weights, in a home of its own."""
    home = tmp_path_factory.mktemp("batch-daemon-home")
    connection = home / "daemon.json"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ANTONI_BRIDGE_HOME", str(home))
        env.setenv("HF_HUB_OFFLINE", "1")
        process = start_daemon(
            ["--demo", "--address", "tcp://127.0.0.1:*", "--client-timeout", "1.0"], connection, home / "start.log"
        )
    yield connection
    process.kill()
    process.wait()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, demo_40x: tuple[Path, DemoLayout], demo_20x: Path) -> Path:
    """Two slides with exports beside them (.geojson and .geojson.gz), an export without its slide, and a
    file that only looks like a slide."""
    folder = tmp_path_factory.mktemp("batch-slides")
    (folder / "a.svs").symlink_to(demo_40x[0])
    (folder / "b.svs").symlink_to(demo_20x)
    point = {"type": "Point", "coordinates": [5, 5]}
    a = [_annotation("a-1", _square(1500, 1500, 2500), "tumour", "Tumor"), _annotation("a-2", point, "dot")]
    (folder / "a.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": a}))
    b = [_annotation("b-1", _square(700, 700, 1300), cls="Stroma")]
    (folder / "b.geojson.gz").write_bytes(gzip.compress(json.dumps(b).encode()))
    (folder / "orphan.geojson").write_text(json.dumps(b))
    (folder / "broken.svs").write_bytes(b"not a slide at all")
    return folder


def _batch(daemon: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("batch", *args, env={"ANTONI_BRIDGE_CONNECTION_FILE": str(daemon)})


def _rows(csv_path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with csv_path.open(newline="", encoding="utf-8") as f:
        return {(r["image"], r["annotation"]): r for r in csv.DictReader(f)}


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_a_folder_run_answers_every_image_and_annotation_and_reports_bad_items(
    daemon: Path, folder: Path, tmp_path: Path
) -> None:
    before = _digest(folder)
    out = tmp_path / "answers.csv"
    result = _batch(daemon, str(folder), "--question", QUESTION, "--out", str(out), "--max-new-tokens", "4")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    rows = _rows(out)
    status = {key: row["status"] for key, row in rows.items()}
    assert status == {
        ("a.svs", ""): "done",
        ("a.svs", "tumour"): "done",
        ("a.svs", "dot"): "failed",
        ("b.svs", ""): "done",
        ("b.svs", "Stroma"): "done",
        ("broken.svs", ""): "failed",
        ("orphan", ""): "failed",
    }
    assert "not an area" in rows[("a.svs", "dot")]["reason"]
    assert "broken.svs" in rows[("broken.svs", "")]["reason"]  # the daemon's own sentence about the file
    assert "No slide beside orphan.geojson" in rows[("orphan", "")]["reason"]
    for row in (r for r in rows.values() if r["status"] == "done"):
        assert row["demo"] == "True" and float(row["total_s"]) > 0 and row["latents_from"] and row["answer"]
        provenance = json.loads(row["provenance"])  # what answered, and how: docs/batch.md
        assert provenance["front_end"] == "batch" and provenance["options_set"] == {"max_new_tokens": 4}
        assert provenance["demo"] is True and provenance["weights"] and provenance["stop_reason"] == row["stop_reason"]
    assert rows[("a.svs", "dot")]["provenance"] == "", "a failed item has no answer to account for"
    assert "4 answered, 3 failed" in result.stdout
    results = json.loads(out.with_suffix(".json").read_text())["results"]
    assert len(results) == 7
    assert all(
        len(r["token_ids"]) == r["tokens"] and r["provenance"]["front_end"] == "batch"
        for r in results
        if r["status"] == "done"
    )

    written = json.loads((tmp_path / "answers-geojson" / "b.svs.geojson").read_text())
    (feature,) = written["features"]
    assert feature["id"] == "b-1" and feature["properties"]["objectType"] == "annotation"
    description = feature["properties"]["metadata"]["ANNOTATION_DESCRIPTION"]
    assert description.startswith(rows[("b.svs", "Stroma")]["answer"].strip()) and "demo weights" in description
    metadata = feature["properties"]["metadata"]
    assert json.loads(metadata["ANTONI provenance 1"]) == json.loads(rows[("b.svs", "Stroma")]["provenance"])
    assert _digest(folder) == before, "the user's slides and exports are never modified"


def test_an_unknown_class_is_reported_for_each_image(daemon: Path, folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "answers.csv"
    args = (str(folder), "--question", QUESTION, "--annotations", "class:Tumor", "--out", str(out))
    result = _batch(daemon, *args, "--max-new-tokens", "4")
    assert result.returncode == 0, result.stderr
    rows = _rows(out)
    assert rows[("a.svs", "tumour")]["status"] == "done" and ("a.svs", "dot") not in rows
    missing = rows[("b.svs", "class:Tumor")]
    assert missing["status"] == "failed" and "No annotation of class 'Tumor'" in missing["reason"]
    assert "Stroma" in missing["reason"]  # the classes it does have


def test_an_interrupted_run_resumes_with_the_items_not_yet_done(daemon: Path, folder: Path, tmp_path: Path) -> None:
    questions = tmp_path / "questions.txt"
    questions.write_text("# one per line\n" + "\n".join(f"Question number {n}?" for n in range(6)) + "\n")
    out = tmp_path / "answers.csv"
    log = out.with_suffix(".jsonl")
    args = ["batch", str(folder), "--questions", str(questions), "--out", str(out), "--max-new-tokens", "200"]
    env = {**os.environ, "ANTONI_BRIDGE_CONNECTION_FILE": str(daemon)}
    first = subprocess.Popen(
        [sys.executable, "-m", "antoni_bridge.cli", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    while not (log.exists() and log.read_bytes().count(b"\n") >= 2) and first.poll() is None:
        time.sleep(0.02)
    first.send_signal(signal.SIGINT)  # Ctrl-C
    _, stderr = first.communicate()
    assert first.returncode == 130, stderr.decode()
    assert b"next run resumes" in stderr
    finished = [json.loads(line) for line in log.read_text().splitlines()]
    assert 2 <= len(finished) < 42, "the run should have been interrupted part-way (6 questions x 7 items)"
    with log.open("ab") as f:
        f.write(b'{"key": "torn by a cra')  # as a crash in the middle of writing a line would leave it

    again = run_cli(*args, env={"ANTONI_BRIDGE_CONNECTION_FILE": str(daemon)})
    assert again.returncode == 0, again.stderr
    done_before = sum(r["status"] == "done" for r in finished)
    assert f"{done_before} done before" in again.stdout
    records = [json.loads(line) for line in log.read_text().splitlines()]
    keys_done_first = {r["key"] for r in finished if r["status"] == "done"}
    assert all(r["key"] not in keys_done_first for r in records[len(finished) :]), "a done item was asked again"
    with out.open(newline="", encoding="utf-8") as f:
        assert len(list(csv.DictReader(f))) == 42 == len({r["key"] for r in records})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/no/such/slide.svs", "--question", "Q?"], "No slide, folder or QuPath project at /no/such/slide.svs."),
        (["EMPTY", "--question", "Q?"], "holds no slides"),
        (["EMPTY", "--question", " "], "No question to ask."),
        (["EMPTY", "--question", "Q?", "--annotations", "tumour"], "Cannot read --annotations 'tumour'."),
        (["EMPTY", "--question", "Q?", "--out", "NOTOURS"], "was not written by a batch"),
        (["EMPTY", "--question", "Q?", "--in-place"], "SOURCE is not one"),
    ],
)
def test_bad_input_for_the_whole_run_is_one_sentence_and_a_hint(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "empty").mkdir()
    not_ours = tmp_path / "mine.csv"
    not_ours.write_text("my own table\n")
    args = [a.replace("EMPTY", str(tmp_path / "empty")).replace("NOTOURS", str(not_ours)) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out" / "answers.csv")]
    result = run_cli("batch", *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and "hint:" in result.stderr and "Traceback" not in result.stderr
    assert not_ours.read_text() == "my own table\n"
