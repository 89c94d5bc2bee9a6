"""Similar slides through a real `serve --demo` daemon on real demo slides and a real feature cache: a slide's
copy first and a region inside it next, the index kept across a restart, forgotten with its slide, narrowed
to a folder or a QuPath project, and bad input refused with a sentence."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from antoni_bridge.client import Client
from antoni_bridge.engine.similar import Entry, SimilarIndex, unit
from antoni_bridge.errors import BridgeError
from antoni_bridge.slides.demo import DemoLayout, write_demo_slide
from antoni_bridge.slides.regions import Region
from tests.conftest import SMALL, run_cli, serve_demo

REGION = Region.rectangle(1500, 1500, 2500, 2500).to_geojson()  # the CLI's --region 1500,1500,2500,2500


class Daemons:
    """`serve --demo` processes started one after another on one feature cache."""

    def __init__(self, factory: pytest.TempPathFactory, cache: Path) -> None:
        self.factory, self.cache = factory, cache
        self.running: Iterator[Path] | None = None
        self.connection = self.start()

    def start(self) -> Path:
        # a client's silence is forgiven for 10 s here (not 1 s): the test machine's two cores are shared
        self.running = serve_demo(self.factory, {}, "--cache-dir", str(self.cache), "--client-timeout", "10")
        return next(self.running)

    def restart(self) -> Path:
        self.stop()
        self.connection = self.start()
        return self.connection

    def stop(self) -> None:
        if self.running is not None:
            next(self.running, None)  # serve_demo's cleanup: the process is killed and waited for
            self.running = None


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory, demo_40x: tuple[Path, DemoLayout]) -> dict[str, Path]:
    """The demo slide, its copy in another folder, and a slide of another tissue layout."""
    folder = tmp_path_factory.mktemp("similar-slides")
    (folder / "copies").mkdir()
    copy = shutil.copy(demo_40x[0], folder / "copies" / "copy.svs")
    other = folder / "other.svs"
    write_demo_slide(other, *SMALL, mpp=0.25, seed=5, progress=False)
    return {"original": demo_40x[0], "copy": Path(copy), "other": other, "folder": folder}


@pytest.fixture(scope="module")
def daemons(tmp_path_factory: pytest.TempPathFactory, slides: dict[str, Path]) -> Iterator[Daemons]:
    """A daemon that has embedded the slide, its copy, a region inside it and the other slide."""
    started = Daemons(tmp_path_factory, tmp_path_factory.mktemp("similar-cache"))
    with Client(started.connection, timeout_s=60) as client:
        for content in (
            {"slide": str(slides["original"])},
            {"slide": str(slides["copy"])},
            {"slide": str(slides["original"]), "region": REGION},
            {"slide": str(slides["other"])},
        ):
            client.run_job("embed", content)
    yield started
    started.stop()


def _similar(daemons: Daemons, content: dict[str, Any]) -> dict[str, Any]:
    with Client(daemons.connection, timeout_s=60) as client:
        return client.run_job("similar", content)


def _found(done: dict[str, Any]) -> list[tuple[str, bool]]:
    return [(Path(result["slide"]).name, result["region"] is not None) for result in done["results"]]


def test_a_copy_comes_first_then_a_region_inside_it_and_the_index_survives_a_restart(
    daemons: Daemons, slides: dict[str, Path]
) -> None:
    done = _similar(daemons, {"slide": str(slides["original"])})
    assert _found(done) == [("copy.svs", False), ("demo-40x.svs", True), ("other.svs", False)]
    assert done["indexed"] == 4
    copy, region, other = done["results"]
    assert copy["similarity"] == pytest.approx(1.0, abs=1e-6)
    assert copy["similarity"] > region["similarity"] > other["similarity"]
    assert copy["fingerprint"] == region["fingerprint"] != other["fingerprint"]
    assert region["region"]["type"] == "Polygon"
    for result in done["results"]:
        with Image.open(result["thumbnail"]) as thumbnail:
            assert thumbnail.format == "PNG" and max(thumbnail.size) <= 256

    daemons.restart()
    again = _similar(daemons, {"slide": str(slides["original"]), "top": 2})
    assert _found(again) == [("copy.svs", False), ("demo-40x.svs", True)] and again["indexed"] == 4
    assert [r["similarity"] for r in again["results"]] == [r["similarity"] for r in done["results"][:2]]


def test_within_keeps_a_folder_or_a_qupath_projects_images(daemons: Daemons, slides: dict[str, Path]) -> None:
    under = _similar(daemons, {"slide": str(slides["original"]), "within": str(slides["copy"].parent)})
    assert _found(under) == [("copy.svs", False)]
    project = slides["folder"] / "project" / "project.qpproj"
    project.parent.mkdir(exist_ok=True)
    uri = slides["other"].as_uri()  # as QuPath writes it: file:/... in the image's server builder
    builder = {"builderType": "uri", "providerClassName": "qupath.lib.images.servers.openslide", "uri": uri}
    project.write_text(json.dumps({"version": "0.5.1", "images": [{"serverBuilder": builder, "entryID": 1}]}))
    listed = _similar(daemons, {"slide": str(slides["original"]), "within": str(project)})
    assert _found(listed) == [("other.svs", False)]


def test_the_cli_lists_them_through_the_daemon(
    daemons: Daemons, slides: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {"ANTONI_BRIDGE_CONNECTION_FILE": str(daemons.connection)}
    monkeypatch.chdir(slides["original"].parent)  # a path relative to here is sent absolute
    printed = run_cli("similar", slides["original"].name, "--region", "1500,1500,2500,2500", "--json", env=env)
    assert printed.returncode == 0, printed.stderr
    first, second, *_ = json.loads(printed.stdout)["results"]  # the slide and its copy: the same embedding
    assert {Path(first["slide"]).name, Path(second["slide"]).name} == {"demo-40x.svs", "copy.svs"}
    assert first["region"] is None and second["region"] is None
    text = run_cli("similar", str(slides["other"]), "--top", "1", env=env)
    assert text.returncode == 0 and "of 4 indexed slides and regions" in text.stdout


@pytest.mark.parametrize(
    ("content", "sentence"),
    [
        ({"within": "copies"}, "'within' must be an absolute path"),
        ({"top": 0}, "'top' must be a whole number from 1 to 1,000."),
        ({"within": "/nowhere/at/all"}, "is neither a folder nor a QuPath project file."),
    ],
)
def test_bad_input_is_refused_with_a_sentence(
    daemons: Daemons, slides: dict[str, Path], content: dict[str, Any], sentence: str
) -> None:
    with pytest.raises(BridgeError, match=sentence.replace("(", r"\(").replace(".", r"\.")) as refused:
        _similar(daemons, {"slide": str(slides["original"]), **content})
    assert "Traceback" not in refused.value.message and refused.value.hint


def test_the_cli_refuses_a_bad_top_and_two_sources(slides: dict[str, Path]) -> None:
    refused = run_cli("similar", str(slides["original"]), "--top", "0")
    assert refused.returncode == 2 and "--top 0 is outside 1..1000." in refused.stderr
    both = run_cli("similar", str(slides["original"]), "--features", str(slides["other"]))
    assert both.returncode == 2 and "Give a slide, or --features FILE (not both)." in both.stderr


def test_forgetting_a_slide_drops_it_from_the_index(daemons: Daemons, slides: dict[str, Path]) -> None:
    with Client(daemons.connection, timeout_s=60) as client:
        client.run_job("forget", {"slide": str(slides["other"])})
    done = _similar(daemons, {"slide": str(slides["original"])})
    assert _found(done) == [("copy.svs", False), ("demo-40x.svs", True)] and done["indexed"] == 3


# ------------------------------------------------------------------------------------------ the index alone


def _entries(count: int, start: int = 0) -> list[Entry]:
    return [Entry(f"/slides/{n}.svs", None, "", f"{n:032x}", None) for n in range(start, start + count)]


def test_the_ranking_is_exact_where_float16_cannot_tell_rows_apart(tmp_path: Path) -> None:
    """Near-ties far below float16's resolution are ranked as float32 ranks them."""
    rng = np.random.default_rng(3)
    base = rng.standard_normal(256).astype(np.float32)
    rows = base + 1e-4 * rng.standard_normal((200, 256)).astype(np.float32)
    index = SimilarIndex(tmp_path / "index")
    index.add(_entries(200), rows)
    query = base + 1e-4 * rng.standard_normal(256).astype(np.float32)
    exact = unit(rows) @ unit(query)
    found = [int(match.entry.fingerprint, 16) for match in index.search(query, 10)]
    assert found == np.argsort(-exact, kind="stable")[:10].tolist()


def test_a_torn_append_is_ignored_and_dropping_most_rows_compacts(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    rows = rng.standard_normal((30, 32)).astype(np.float32)
    index = SimilarIndex(tmp_path / "index")
    index.add(_entries(30), rows)
    with (tmp_path / "index" / "entries.jsonl").open("ab") as torn:  # a crash after the append, before the manifest
        torn.write(b'{"slide": "/slides/half')
    with (tmp_path / "index" / "vectors.f16").open("ab") as torn:
        torn.write(b"\0" * 10)
    reopened = SimilarIndex(tmp_path / "index")
    assert len(reopened) == 30
    reopened.add(_entries(1, start=30), rows[:1])
    assert len(SimilarIndex(tmp_path / "index")) == 31  # the torn tail was cut, the new entry reads back

    dropped = sum(reopened.drop(f"{n:032x}") for n in range(20))
    assert dropped == 20 and len(reopened) == 11
    lines = (tmp_path / "index" / "entries.jsonl").read_bytes().splitlines()
    entries = [line for line in lines if not line.startswith(b'{"drop"')]
    assert len(entries) == 15  # rewritten when the 16th of 31 went; the 4 after it are marked dropped
    best = SimilarIndex(tmp_path / "index").search(rows[25], 1)[0]
    assert best.entry.slide == "/slides/25.svs" and best.similarity == pytest.approx(1.0, abs=1e-6)
