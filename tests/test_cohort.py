"""`cohort embed` on a real local Ray (2 CPUs, started once for the module) with the tiny demo encoders over
a folder of small demo slides: the same feature files as single-process `embed`, a worker killed mid-slide
survived, a damaged slide recorded as failed, reruns that do no work, and the message without Ray."""

from __future__ import annotations

import csv
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest

from antoni_bridge.cli import main
from antoni_bridge.cohort.work import TileWorker
from antoni_bridge.slides.demo import write_demo_slide

SEEDS = {"first": 28, "second": 5, "third": 11}  # three layouts of one to four tissue pieces
SIZE = (4800, 3600)  # level-0 pixels at 0.25 um/px: 18-30 tiles of 224 px at 0.5 um/px each
SMALL_BATCHES = ("--batch-size", "8")  # several blocks and batches per slide, in embed and cohort alike
BLOCKS = ("--block-tiles", "8")


@pytest.fixture(scope="module")
def ray_local() -> Iterator[object]:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cohort")
    for name, seed in SEEDS.items():
        write_demo_slide(folder / f"{name}.svs", *SIZE, mpp=0.25, seed=seed, progress=False)
    return folder


@pytest.fixture(scope="module")
def encoder_args(demo_encoders: tuple[Path, Path]) -> list[str]:
    return ["--tile-encoder", str(demo_encoders[0]), "--slide-encoder", str(demo_encoders[1]), *SMALL_BATCHES]


@pytest.fixture(scope="module")
def single_process(cohort_dir: Path, encoder_args: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What `embed` writes for each slide, one process, no Ray."""
    out = tmp_path_factory.mktemp("embedded")
    for name in SEEDS:
        args = ["embed", str(cohort_dir / f"{name}.svs"), "--out", str(out / f"{name}.h5"), "--cache-dir", str(out)]
        assert main([*args, *encoder_args]) == 0
    return out


@pytest.fixture(scope="module")
def with_broken(cohort_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cohort plus a slide whose file is damaged (a TIFF header and nothing else)."""
    folder = tmp_path_factory.mktemp("with-broken")
    for slide in cohort_dir.iterdir():
        (folder / slide.name).symlink_to(slide)
    (folder / "broken.svs").write_bytes(b"II*\x00" + bytes(1000))
    return folder


@pytest.fixture(scope="module")
def first_run(ray_local: object, with_broken: Path, encoder_args: list[str], tmp_path_factory) -> tuple[Path, int]:
    out = tmp_path_factory.mktemp("cohort-out")
    status = main(["cohort", "embed", str(with_broken), "--out", str(out), *encoder_args, *BLOCKS])
    return out, status


def manifest(out: Path) -> dict[str, dict[str, object]]:
    import pyarrow.parquet as pq

    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    assert len(rows) == len({r["name"] for r in rows}), "a slide recorded twice"
    return {r["name"]: r for r in rows}


def assert_same_file(ours: Path, reference: Path) -> None:
    with h5py.File(ours, "r") as a, h5py.File(reference, "r") as b:
        for name in ("coords", "contour_index", "features", "latents"):
            np.testing.assert_array_equal(a[name][()], b[name][()], err_msg=name)
        assert _same_attrs(a.attrs, b.attrs)
        assert _same_attrs(a["coords"].attrs, b["coords"].attrs)


def _same_attrs(a: h5py.AttributeManager, b: h5py.AttributeManager) -> bool:
    return sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_every_slide_equals_single_process_embed(first_run: tuple[Path, int], single_process: Path) -> None:
    out, _ = first_run
    for name in SEEDS:
        assert_same_file(out / f"{name}.h5", single_process / f"{name}.h5")
    rows = manifest(out)
    for name in SEEDS:
        with h5py.File(out / f"{name}.h5", "r") as h5:
            assert rows[name]["fingerprint"] == h5.attrs["slide_fingerprint"]
            assert rows[name]["tiles"] == len(h5["coords"]) and rows[name]["status"] == "done"
            assert rows[name]["error"] is None and rows[name]["seconds"] > 0


def test_a_damaged_slide_is_recorded_as_failed_and_the_others_finish(
    first_run: tuple[Path, int], capsys: pytest.CaptureFixture[str]
) -> None:
    out, status = first_run
    rows = manifest(out)
    assert status == 1  # some slide failed: a script running the cohort can tell
    assert rows["broken"]["status"] == "failed" and "damaged" in rows["broken"]["error"]
    assert not (out / "broken.h5").exists()
    assert [r["status"] for n, r in rows.items() if n != "broken"] == ["done"] * 3


def test_a_rerun_does_no_work_and_redoes_a_missing_file(
    first_run: tuple[Path, int], ray_local: object, with_broken: Path, encoder_args: list[str], single_process: Path
) -> None:
    from antoni_bridge.cohort.embedding import embed_cohort
    from antoni_bridge.cohort.sources import read_cohort

    out, _ = first_run
    written = {name: (out / f"{name}.h5").stat().st_mtime_ns for name in SEEDS}
    settings = _settings(encoder_args)
    again = embed_cohort(ray_local, read_cohort(with_broken), out, settings)
    assert (again.embedded, again.skipped, again.tiles) == (0, 3, 0)
    assert {name: (out / f"{name}.h5").stat().st_mtime_ns for name in SEEDS} == written
    assert manifest(out)["first"]["seconds"] > 0  # a skipped slide keeps its first run's record

    (out / "second.h5").unlink()  # as a run killed before its atomic rename leaves it
    (out / ".second.h5.99999.tmp").write_bytes(b"half a file")
    redone = embed_cohort(ray_local, read_cohort(with_broken), out, settings)
    assert (redone.embedded, redone.skipped) == (1, 2)
    assert_same_file(out / "second.h5", single_process / "second.h5")


def _settings(encoder_args: list[str]):  # -> EmbedSettings as the command builds them, with the test's batches
    from antoni_bridge.cohort.work import EmbedSettings

    tile, slide = encoder_args[1], encoder_args[3]
    return EmbedSettings(tile_encoder=tile, slide_encoder=slide, batch_size=8, block_tiles=8)


class DyingOnceWorker(TileWorker):
    """A test double of a crash: the real encoder worker, whose process exits hard on its second block once
    per test (a marker file remembers it across the restart), as an out-of-memory kill would end it."""

    marker: Path

    def embed(self, pixels: np.ndarray) -> tuple[np.ndarray, int]:
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 2 and not self.marker.exists():
            self.marker.write_text("killed", encoding="utf-8")
            os._exit(1)
        return super().embed(pixels)


def test_a_worker_killed_mid_slide_is_survived_with_nothing_lost_or_duplicated(
    ray_local: object, cohort_dir: Path, encoder_args: list[str], single_process: Path, tmp_path: Path
) -> None:
    from ray import cloudpickle

    from antoni_bridge.cohort.embedding import embed_cohort
    from antoni_bridge.cohort.sources import read_cohort

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import the tests package
    DyingOnceWorker.marker = tmp_path / "killed"
    summary = embed_cohort(
        ray_local, read_cohort(cohort_dir), tmp_path / "out", _settings(encoder_args), worker_class=DyingOnceWorker
    )
    assert DyingOnceWorker.marker.exists(), "the worker was not killed"
    assert (summary.embedded, summary.failed) == (3, 0)
    assert summary.tiles == sum(r.tiles for r in summary.records)  # every block counted once
    for name in SEEDS:
        assert_same_file(tmp_path / "out" / f"{name}.h5", single_process / f"{name}.h5")


def test_a_manifest_names_slides_regions_and_cases(
    ray_local: object, cohort_dir: Path, encoder_args: list[str], tmp_path: Path
) -> None:
    table = tmp_path / "cohort.csv"
    with table.open("w", encoding="utf-8", newline="") as fh:
        rows = csv.writer(fh)
        rows.writerow(["path", "region", "case"])
        square = (
            '{"type": "Polygon", "coordinates": [[[600, 600], [3400, 600], [3400, 3000], [600, 3000], [600, 600]]]}'
        )
        rows.writerow([str(cohort_dir / "first.svs"), square, "case-1"])
        rows.writerow(["missing.svs", "", "case-2"])
    out = tmp_path / "out"
    assert main(["cohort", "embed", str(table), "--out", str(out), *encoder_args, *BLOCKS]) == 1
    region_file = tmp_path / "region.geojson"
    region_file.write_text(f'{{"type": "Feature", "geometry": {square}, "properties": {{}}}}', encoding="utf-8")
    single = tmp_path / "single.h5"
    args = ["embed", str(cohort_dir / "first.svs"), "--geojson", str(region_file), "--out", str(single)]
    assert main([*args, "--cache-dir", str(tmp_path / "cache"), *encoder_args]) == 0
    assert_same_file(out / "first.h5", single)
    rows = manifest(out)
    assert rows["first"]["case"] == "case-1" and '"Polygon"' in rows["first"]["region"]
    assert rows["missing"]["status"] == "failed" and "missing" in rows["missing"]["error"]


def test_cohort_ask_over_embedded_slides_answers_as_the_engine_does_with_full_provenance(
    first_run: tuple[Path, int], ray_local: object, tmp_path: Path
) -> None:
    import pyarrow.parquet as pq

    from antoni_bridge.demo_assets import demo_weights
    from antoni_bridge.engine import Engine, FeaturesSource, ModelChoice, options_from

    embedded, _ = first_run
    questions = tmp_path / "questions.txt"
    questions.write_text("Which stain does the slide show?\n# a comment\nIs there DAB staining?\n", encoding="utf-8")
    out = tmp_path / "answers.parquet"
    args = ["cohort", "ask", str(embedded), "--questions", str(questions), "--demo", "--max-new-tokens", "12"]
    assert main([*args, "--out", str(out)]) == 1  # the damaged slide has no answers
    rows = pq.read_table(out).to_pylist()
    names = sorted([*SEEDS, "broken"])
    assert sorted((r["name"], r["question_number"]) for r in rows) == [(n, q) for n in names for q in (1, 2)]
    done = [r for r in rows if r["name"] != "broken"]
    assert all(r["status"] == "done" and r["stop_reason"] in ("stop", "length") for r in done)
    assert all(r["status"] == "failed" and "Not embedded" in r["error"] for r in rows if r["name"] == "broken")
    demo = demo_weights()
    engine = Engine(ModelChoice(str(demo.tile_encoder), str(demo.slide_encoder), demo.antoni, demo=True), tmp_path)
    first = next(r for r in rows if r["name"] == "first" and r["question_number"] == 2)
    conversation = [{"role": "user", "content": "Is there DAB staining?"}]
    expected = engine.ask(FeaturesSource(embedded / "first.h5"), conversation, options_from({"max_new_tokens": 12}))
    assert first["answer"] == expected.text and first["latents_from"] == "file"
    assert first["weights_sha256"] == expected.provenance["weights_sha256"] and first["demo"] is True
    assert '"max_new_tokens": 12' in first["decoding"] and '"ray": "2.' in first["versions"]


def test_cohort_ask_writes_evidence_maps_and_zero_shot_columns(
    first_run: tuple[Path, int], ray_local: object, tmp_path: Path
) -> None:
    import json

    from antoni_bridge.cohort.manifest import SlideRecord, write_manifest

    embedded, _ = first_run
    one = tmp_path / "one-slide"  # a `cohort embed` output of one slide: an evidence map costs seconds per answer
    one.mkdir()
    (one / "first.h5").write_bytes((embedded / "first.h5").read_bytes())
    write_manifest(one, [SlideRecord(str(embedded / "first.h5"), "first", "f", "done", 20, 1.0, None)])
    questions = tmp_path / "questions.txt"
    questions.write_text("Is there DAB staining?\n", encoding="utf-8")
    out = tmp_path / "answers.csv"
    args = ["cohort", "ask", str(one), "--questions", str(questions), "--demo", "--max-new-tokens", "8"]
    assert main([*args, "--out", str(out), "--evidence", "--zero-shot", "H&E,DAB"]) == 0
    with out.open(encoding="utf-8") as fh:
        (answer,) = list(csv.DictReader(fh))
    probabilities = json.loads(answer["zero_shot"])
    assert list(probabilities) == ["H&E", "DAB"] and abs(sum(probabilities.values()) - 1) < 1e-5
    assert answer["zero_shot_best"] == max(probabilities, key=probabilities.get)
    assert answer["reliance_flagged"] in ("true", "false") and math.isfinite(float(answer["reliance_score"]))
    tiles = json.loads(Path(answer["evidence_map"]).read_text(encoding="utf-8"))
    assert Path(answer["evidence_map"]).parent == tmp_path / "answers-evidence"
    with h5py.File(one / "first.h5", "r") as h5:
        assert len(tiles["features"]) == len(h5["coords"])  # one QuPath tile object per tile
    assert answer["evidence_gap"] and not answer["evidence_error"] and not answer["zero_shot_error"]


def test_encoders_that_cannot_load_end_the_run_with_one_sentence(
    ray_local: object, cohort_dir: Path, demo_encoders: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    wrong = ["--tile-encoder", str(demo_encoders[1]), "--slide-encoder", str(demo_encoders[1])]  # a Prism as Virchow
    assert main(["cohort", "embed", str(cohort_dir), "--out", str(tmp_path / "out"), *wrong]) == 2
    err = capsys.readouterr().err
    assert "error: The encoder workers could not start:" in err and "not a Virchow-style ViT" in err
    assert "Traceback" not in err


def test_without_ray_the_command_says_to_install_the_extra(
    monkeypatch: pytest.MonkeyPatch, cohort_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as it does without the extra
    assert main(["cohort", "embed", str(cohort_dir), "--out", str(tmp_path / "out"), "--demo"]) == 2
    err = capsys.readouterr().err
    assert "Ray, which is not installed" in err and "pip install 'antoni-bridge[cohort]'" in err
    assert not (tmp_path / "out").exists()


def test_a_cache_folder_is_refused_before_ray_starts(
    cohort_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["cohort", "embed", str(cohort_dir), "--out", str(tmp_path / "out"), "--demo", "--cache-dir", str(tmp_path)]
    assert main(args) == 2
    assert "keeps no feature cache" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
