"""`antoni-bridge batch --evidence --zero-shot LABELS --report` as users run it, against a real `serve --demo`
daemon on a demo slide: an evidence map per answer (QuPath tile objects), Prism's zero-shot labels and
report draft as columns; bad labels refused before anything runs."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from antoni_bridge.slides.demo import DemoLayout
from tests.conftest import run_cli, serve_demo

QUESTION = "Is there DAB (brown) staining?"
LABELS = "haematoxylin and eosin,immunohistochemistry (DAB)"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A demo daemon that forgives a client's silence for 10 s (the build machine's cores are shared)."""
    yield from serve_demo(tmp_path_factory, {}, "--client-timeout", "10")


def test_a_batch_writes_an_evidence_map_per_answer_and_prisms_columns(
    daemon: Path, demo_40x: tuple[Path, DemoLayout], tmp_path: Path
) -> None:
    folder = tmp_path / "slides"
    folder.mkdir()
    (folder / "a.svs").symlink_to(demo_40x[0])
    out = tmp_path / "answers.csv"
    args = [str(folder), "--question", QUESTION, "--annotations", "none", "--out", str(out), "--max-new-tokens", "4"]
    env = {"ANTONI_BRIDGE_CONNECTION_FILE": str(daemon)}
    assert run_cli("batch", *args, env=env).returncode == 0  # answered without them first
    extras = ["--evidence", "--evidence-groups", "8", "--evidence-orders", "2", "--zero-shot", LABELS, "--report"]
    result = run_cli("batch", *args, *extras, env=env)  # the same batch again, now asking for them
    assert result.returncode == 0, result.stderr
    assert "1 answered" in result.stdout, "an answer without the columns asked for is asked again"
    with out.open(newline="", encoding="utf-8") as table:
        (row,) = csv.DictReader(table)
    assert row["status"] == "done", row["reason"]

    shares = dict(pair.split("=") for pair in row["zero_shot"].split("; "))
    assert set(shares) == set(LABELS.split(",")) and sum(map(float, shares.values())) == pytest.approx(1, abs=2e-3)
    assert row["zero_shot_best"] == max(shares, key=lambda label: float(shares[label]))
    assert row["prism_report"].strip()

    evidence = Path(row["evidence_map"])
    assert evidence.parent == tmp_path / "answers-evidence" and float(row["evidence_gap"]) == float(row["evidence_gap"])
    tiles = json.loads(evidence.read_text(encoding="utf-8"))["features"]
    assert tiles and all(t["properties"]["objectType"] == "tile" for t in tiles)
    assert all("ANTONI evidence" in t["properties"]["measurements"] for t in tiles)
    assert {t["properties"]["measurements"]["ANTONI evidence group"] for t in tiles} == set(range(8))
    (record,) = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))["results"]
    assert record["evidence_map"] == str(evidence) and record["zero_shot_best"] == row["zero_shot_best"]


@pytest.mark.parametrize(
    ("options", "sentence"),
    [
        (["--zero-shot", "only-one"], "--zero-shot needs 2 to 64 labels"),
        (["--zero-shot", "a,b,a"], "--zero-shot names a label twice."),
        (["--evidence", "--evidence-groups", "1"], "--evidence-groups must be 2 to 1024"),
    ],
)
def test_bad_extras_are_refused_before_anything_runs(
    demo_40x: tuple[Path, DemoLayout], tmp_path: Path, options: list[str], sentence: str
) -> None:
    result = run_cli("batch", str(demo_40x[0]), "--question", QUESTION, "--out", str(tmp_path / "a.csv"), *options)
    assert result.returncode == 2 and sentence in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "a.csv").exists()
