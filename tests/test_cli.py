"""The command line as users run it: separate processes, real files, exit codes and messages."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
from PIL import Image

from antoni_bridge import paths
from antoni_bridge.demo_assets import DEMO_NOTE
from antoni_bridge.slides.demo import DemoLayout
from tests.conftest import run_cli


def test_make_demo_slide_then_tiles_with_overview(tmp_path: Path) -> None:
    slide = tmp_path / "made.svs"
    made = run_cli("make-demo-slide", str(slide), "--width", "4000", "--height", "3000")
    assert made.returncode == 0, made.stderr
    out, overview = tmp_path / "tiles.h5", tmp_path / "overview.png"
    tiles = run_cli("tiles", str(slide), "--out", str(out), "--overview", str(overview))
    assert tiles.returncode == 0, tiles.stderr
    assert "tiles of 224 px at 0.5 um/px" in tiles.stdout
    with h5py.File(out) as h5:
        assert len(h5["coords"]) > 10 and "features" not in h5
    assert Image.open(overview).size[0] > 100


def test_embed_with_demo_encoders_and_a_geojson_region(demo_40x: tuple[Path, DemoLayout], tmp_path: Path) -> None:
    geojson = tmp_path / "annotations.geojson"
    square = [[[1500, 1500], [4500, 1500], [4500, 4500], [1500, 4500], [1500, 1500]]]
    geojson.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "geometry": {"type": "Polygon", "coordinates": square},
                        "properties": {"objectType": "annotation", "name": "tumour"},
                    },
                    {
                        "type": "Feature",
                        "geometry": {"type": "Point", "coordinates": [10, 10]},
                        "properties": {"objectType": "annotation", "name": "a point"},
                    },
                ],
            }
        )
    )
    out = tmp_path / "region.h5"
    result = run_cli(
        "embed", str(demo_40x[0]), "--geojson", str(geojson), "--name", "tumour", "--out", str(out), "--demo"
    )
    assert result.returncode == 0, result.stderr
    assert "demo encoders" in result.stdout
    with h5py.File(out) as h5:
        assert h5["latents"].shape == (513, 64)
        assert h5.attrs["region_name"] == "tumour"
        coords = h5["coords"][()]
    assert ((coords + 224 >= 1500) & (coords + 224 <= 4500)).all(), "tile centres lie in the region"


def test_demo_command_runs_offline(tmp_path: Path) -> None:
    result = run_cli("demo", timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("latents (513, 64)") == 3 and result.stdout.count("answer: ") == 3
    assert result.stdout.count("Image reliance: ") == 3  # next to every answer
    said, truth = re.findall(r"answer: (.*)\n", result.stdout), re.findall(r"truth:  (.*)\n", result.stdout)
    assert sum(a.strip() == t.strip() for a, t in zip(said, truth, strict=True)) >= 2, result.stdout
    follow_up = result.stdout.split("== ")[-1]
    assert "from the daemon's memory" in follow_up and " 0 prompt tokens reused" not in follow_up
    assert not (paths.home() / "demo-daemon.json").exists()  # the demo's daemon stopped


def _slide_without_mpp(path: Path) -> Path:
    pixels = np.full((2048, 2048, 3), 240, dtype=np.uint8)
    pixels[500:1500, 500:1500] = (150, 60, 120)
    tifffile.imwrite(path, pixels, tile=(256, 256), photometric="rgb")
    return path


def _triangle(properties: object) -> dict:
    """A GeoJSON feature with these properties and a small triangle."""
    return {
        "type": "Feature",
        "properties": properties,
        "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [9, 0], [9, 9], [0, 0]]]},
    }


def _bad_inputs(demo: Path, tmp: Path) -> dict[str, tuple[list[str], str]]:
    text = tmp / "notes.svs"
    text.write_text("not a slide")
    truncated = tmp / "truncated.svs"
    truncated.write_bytes(demo.read_bytes()[: demo.stat().st_size * 6 // 10])
    corrupt = tmp / "corrupt.svs"
    corrupt.write_bytes(b"\x00" * 64 + demo.read_bytes()[64:])
    broken_json = tmp / "broken.geojson"
    broken_json.write_text('{"type": "FeatureCollection", "features": [')
    named = tmp / "named.geojson"
    named.write_text(json.dumps(_triangle({"name": "stroma"})))
    no_mpp = _slide_without_mpp(tmp / "no-mpp.tif")
    cut_ifd = tmp / "cut-ifd.svs"
    cut_ifd.write_bytes(demo.read_bytes()[:1500])
    latin = tmp / "latin.svs"
    raw = demo.read_bytes()
    at = raw.index(b"Aperio Image Library") + 7
    latin.write_bytes(raw[:at] + b"\xff\xfe\x80\x81" + raw[at + 4 :])
    sixteen = tmp / "sixteen.tif"
    tifffile.imwrite(
        sixteen, np.zeros((512, 512, 3), np.uint16), tile=(256, 256), resolution=(2e4, 2e4), resolutionunit="CENTIMETER"
    )
    null_features = tmp / "null.geojson"
    null_features.write_text('{"type": "FeatureCollection", "features": null}')
    odd_properties = tmp / "odd.geojson"
    odd_properties.write_text(json.dumps([_triangle(["x"])]))
    d = str(demo)
    return {
        "missing file": ([str(tmp / "nowhere.svs")], "No slide at"),
        "not a slide": ([str(text)], "is not a slide"),
        "truncated": ([str(truncated)], "is truncated"),
        "corrupt header": ([str(corrupt)], "is not a slide"),
        "no mpp": ([str(no_mpp)], "has no microns-per-pixel"),
        "region outside": ([d, "--region", "90000,90000,100,100"], "lies outside the slide"),
        "region without tissue": ([d, "--region", "10,10,300,300"], "No tissue in the region"),
        "region left of the slide": ([d, "--region=-9000,0,500,500"], "lies outside the slide"),
        "malformed region": ([d, "--region", "1,2,three"], "Cannot read the region"),
        "empty region": ([d, "--region", "1,2,0,5"], "is empty"),
        "unreadable geojson": ([d, "--geojson", str(broken_json)], "is not readable GeoJSON"),
        "name not found": ([d, "--geojson", str(named), "--name", "tumour"], "No annotation named 'tumour'"),
        "name without geojson": ([d, "--name", "tumour"], "no --geojson was given"),
        "cut inside the directory": ([str(cut_ifd)], "damaged|not a slide|truncated"),
        "non-ASCII description": ([str(latin)], "metadata cannot be read"),
        "16-bit pixels": ([str(sixteen)], "8-bit RGB"),
        "NaN region": ([d, "--region", "0,0,nan,100"], "not a number"),
        "NaN mpp": ([d, "--mpp", "nan"], "positive number"),
        "features null": ([d, "--geojson", str(null_features)], "holds no area annotation"),
        "properties not a mapping": ([d, "--geojson", str(odd_properties), "--name", "x"], "No annotation named"),
    }


@pytest.mark.parametrize("command", ["tiles", "embed"])
def test_every_bad_input_gets_one_clear_error_and_no_output(
    command: str, demo_40x: tuple[Path, DemoLayout], tmp_path: Path
) -> None:
    for label, (args, message) in _bad_inputs(demo_40x[0], tmp_path).items():
        out = tmp_path / f"{label}.h5"
        extra = ["--demo"] if command == "embed" else []
        result = run_cli(command, *args, "--out", str(out), *extra)
        assert result.returncode == 2, f"{label}: {result.stderr}"
        assert "Traceback" not in result.stderr, label
        assert result.stderr.startswith("error: ") and re.search(message, result.stderr), f"{label}: {result.stderr}"
        assert "hint: " in result.stderr, label
        assert not out.exists() and not list(tmp_path.glob(f".{label}.h5*")), f"{label} left an output file"


def test_slide_mpp_override_makes_a_slide_without_mpp_usable(tmp_path: Path) -> None:
    slide = _slide_without_mpp(tmp_path / "no-mpp.tif")
    out = tmp_path / "tiles.h5"
    result = run_cli("tiles", str(slide), "--slide-mpp", "0.5", "--out", str(out))
    assert result.returncode == 0, result.stderr
    with h5py.File(out) as h5:
        assert h5.attrs["slide_mpp"] == 0.5 and len(h5["coords"]) > 0


def test_ask_a_features_file_locally_as_json(demo_40x: tuple[Path, DemoLayout], tmp_path: Path) -> None:
    import torch

    features = tmp_path / "latents.pt"
    torch.save(torch.randn(1, 513, 64), features)  # upstream's hand-made tensor, batch dimension included
    result = run_cli(
        "ask",
        "--features",
        str(features),
        "--local",
        "--demo",
        "--greedy",
        "--max-new-tokens",
        "6",
        "--json",
        "What organ is this?",
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["demo_weights"] is True and len(answer["token_ids"]) <= 6
    assert set(answer["timings"]) >= {"first_token_s", "total_s", "tokens_per_s", "prompt_tokens"}
    assert answer["front_end"] == "cli" and answer["options_set"] == {"greedy": True, "max_new_tokens": 6}
    assert answer["provenance"]["decoding"]["max_new_tokens"] == 6 and answer["provenance"]["demo"] is True


def test_ask_about_a_slide_region_streams_and_says_demo(demo_40x: tuple[Path, DemoLayout]) -> None:
    result = run_cli(
        "ask",
        str(demo_40x[0]),
        "Is there a tumour?",
        "--region",
        "1500,1500,2500,2500",
        "--local",
        "--demo",
        "--greedy",
        "--max-new-tokens",
        "5",
    )
    assert result.returncode == 0, result.stderr
    assert DEMO_NOTE in result.stdout and "of at most 5 tokens, first after" in result.stdout
    assert re.search(r"[\d.]+ tokens/s", result.stdout), result.stdout


def test_ask_reads_big_endian_and_gradient_carrying_latents(tmp_path: Path) -> None:
    import torch

    big_endian = tmp_path / "java.h5"
    with h5py.File(big_endian, "w") as h5:
        h5["features"] = np.random.default_rng(0).normal(size=(513, 64)).astype(">f4")
    gradients = tmp_path / "grad.pt"
    torch.save(torch.randn(513, 64, requires_grad=True), gradients)
    for features in (big_endian, gradients):
        result = run_cli(
            "ask",
            "--features",
            str(features),
            "--local",
            "--demo",
            "--greedy",
            "--max-new-tokens",
            "3",
            "--json",
            "Organ?",
        )
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["demo_weights"] is True


def test_ask_multiple_choice(tmp_path: Path) -> None:
    import torch

    features = tmp_path / "latents.pt"
    torch.save(torch.randn(513, 64), features)
    result = run_cli(
        "ask", "--features", str(features), "--local", "--demo", "--choices", "A=colon,B=lung,C=skin", "Which organ?"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 4 and "best: " in result.stdout


def test_ask_bad_inputs(tmp_path: Path) -> None:
    import torch

    wrong = tmp_path / "wrong.pt"
    torch.save(torch.randn(513, 32), wrong)
    nan = tmp_path / "nan.pt"
    torch.save(torch.full((513, 64), float("nan")), nan)
    ints = tmp_path / "ints.pt"
    torch.save(torch.ones(513, 64, dtype=torch.long), ints)
    strings = tmp_path / "strings.h5"
    with h5py.File(strings, "w") as h5:
        h5["features"] = np.array([b"not numbers"] * 513)
    cases = {
        "no daemon": (["--features", str(wrong), "Q"], "the daemon is not running"),
        "wrong shape": (["--features", str(wrong), "--local", "Q"], "have shape"),
        "nan": (["--features", str(nan), "--local", "Q"], "NaN"),
        "missing file": (["--features", str(tmp_path / "none.pt"), "--local", "Q"], "No features file"),
        "bad choices": (["--features", str(nan), "--local", "--choices", "A colon", "Q"], "Cannot read the choice"),
        "slide and features": (["--features", str(wrong), "--local", "slide.svs", "Q"], "only the question"),
        "integer latents": (["--features", str(ints), "--local", "Q"], "not floating-point"),
        "string dataset": (["--features", str(strings), "--local", "Q"], "not floating-point"),
        "empty question": (["--features", str(wrong), "--local", "  "], "question is empty"),
        "empty choices": (["--features", str(wrong), "--local", "--choices", "", "Q"], "Cannot read the choice"),
    }
    for label, (args, message) in cases.items():
        result = run_cli("ask", *args, *(["--demo"] if "--local" in args else []))
        assert result.returncode == 2, f"{label}: {result.stderr}"
        assert "Traceback" not in result.stderr and message in result.stderr, f"{label}: {result.stderr}"


def test_outputs_never_overwrite_inputs(demo_40x: tuple[Path, DemoLayout], tmp_path: Path) -> None:
    slide = tmp_path / "victim.svs"
    slide.write_bytes(demo_40x[0].read_bytes())
    before = slide.read_bytes()
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    cases = [
        (["tiles", str(slide), "--out", str(slide)], "is one of the inputs"),
        (["tiles", str(slide), "--out", str(tmp_path / "a.h5"), "--overview", str(slide)], "is one of the inputs"),
        (["tiles", str(slide), "--out", str(tmp_path / "a.h5"), "--overview", str(tmp_path / "a.h5")], "same file"),
        (["tiles", str(slide), "--out", str(notes)], "is not an HDF5 file"),
    ]
    for args, message in cases:
        result = run_cli(*args)
        assert result.returncode == 2 and message in result.stderr, result.stderr
    assert slide.read_bytes() == before and notes.read_text() == "mine"


def test_a_missing_slide_is_reported_before_any_model_loads(tmp_path: Path) -> None:
    result = run_cli("embed", str(tmp_path / "nowhere.svs"), "--out", str(tmp_path / "x.h5"))  # real weights
    assert result.returncode == 2 and "No slide at" in result.stderr, result.stderr


def test_a_grey_slide_is_read(tmp_path: Path) -> None:
    grey = np.full((2048, 2048), 235, dtype=np.uint8)
    grey[400:1600, 400:1600] = 90
    path = tmp_path / "grey.tif"
    tifffile.imwrite(path, grey, tile=(256, 256), resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    result = run_cli("tiles", str(path), "--out", str(tmp_path / "grey.h5"))
    assert result.returncode == 0, result.stderr


def test_mistakes_on_the_command_line_get_did_you_mean_and_the_bad_value(
    demo_40x: tuple[Path, DemoLayout], tmp_path: Path
) -> None:
    slide, out = str(demo_40x[0]), str(tmp_path / "x.h5")
    mistyped = "--mpx is not an option of antoni-bridge tiles; did you mean --mpp?"
    cases = {
        "command": (["tile", slide], "did you mean tiles?"),
        "flag": (["tiles", slide, "--out", out, "--mpx", "1"], mistyped),
        "mpp": (["tiles", slide, "--out", out, "--mpp", "0"], "--mpp 0.0 is not a positive number"),
        "size": (["tiles", slide, "--out", out, "--size", "7"], "--size 7 is outside 16..4096"),
        "min tissue": (["tiles", slide, "--out", out, "--min-tissue", "2"], "--min-tissue 2.0 is outside [0, 1)"),
        "slide mpp": (["tiles", slide, "--out", out, "--slide-mpp", "-1"], "--slide-mpp -1.0 is not a positive"),
        "quant": (["ask", "--features", out, "--quant", "4bit", "Q"], "--quant: for a model run in this process"),
        "device": (["ask", slide, "Q", "--device", "cpu"], "without --local the daemon answers"),
        "two questions": (["ask", slide, "Organ?", "Grade?"], "one question, but got 3 words"),
    }  # fmt: skip
    for label, (args, message) in cases.items():
        result = run_cli(*args)
        assert result.returncode == 2, f"{label}: {result.stderr}"
        assert message in result.stderr and "Traceback" not in result.stderr, f"{label}: {result.stderr}"
    assert not Path(out).exists()


def test_version_verbose_after_the_command_and_one_question_in_the_usage() -> None:
    from antoni_bridge import __version__

    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"antoni-bridge {__version__}"
    verbose = run_cli("status", "--verbose")  # no daemon: --verbose shows the traceback behind the error
    assert verbose.returncode != 0 and "Traceback" in verbose.stderr and "not running" in verbose.stderr
    usage = run_cli("ask", "--help").stdout
    assert 'ask [SLIDE] "QUESTION" [options]' in usage and "..." not in usage.split("options:")[0]


def test_tiles_of_a_region_count_its_pieces_and_ask_names_embed_for_them(
    demo_40x: tuple[Path, DemoLayout], tmp_path: Path
) -> None:
    slide, layout = str(demo_40x[0]), demo_40x[1]
    (x, y), r = layout.pieces[0].centre, layout.pieces[0].radius  # a box wholly inside the first piece
    box = f"{x - r / 2:.0f},{y - r / 2:.0f},{r:.0f},{r:.0f}"
    whole = run_cli("tiles", slide, "--out", str(tmp_path / "whole.h5"))
    region = run_cli("tiles", slide, "--out", str(tmp_path / "region.h5"), "--region", box)
    pieces = int(re.search(r"over (\d+) tissue pieces", whole.stdout).group(1))
    assert pieces > 1 and "over 1 tissue pieces of the region" in region.stdout, (whole.stdout, region.stdout)
    asked = run_cli("ask", "--features", str(tmp_path / "region.h5"), "--local", "--demo", "Organ?")
    assert asked.returncode == 2 and "holds tiles only" in asked.stderr and "antoni-bridge embed" in asked.stderr


def _fake_project(tmp_path: Path, stamp: str) -> Path:
    """A copy of the setup script and pyproject.toml, and a venv whose python only records its calls."""
    root = tmp_path / "project"
    (root / "scripts").mkdir(parents=True)
    repo = Path(__file__).parents[1]
    shutil.copy(repo / "scripts" / "setup-env", root / "scripts" / "setup-env")
    shutil.copy(repo / "pyproject.toml", root / "pyproject.toml")
    python = root / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/sh\necho "$@" >> {root}/pip-calls\n')
    python.chmod(0o755)
    digest = hashlib.sha256((root / "pyproject.toml").read_bytes()).hexdigest()[:16]
    (root / ".venv" / ".antoni-bridge-setup").write_text(f"{digest} extras={stamp}\n")
    return root


def test_setup_env_keeps_an_env_installed_with_more_extras(tmp_path: Path) -> None:
    root = _fake_project(tmp_path, "desk,test")
    for wanted in ("", "test", "desk,test"):  # run-demo after run-tests: nothing to install, no network
        done = subprocess.run([root / "scripts" / "setup-env", wanted], capture_output=True, text=True)
        assert done.returncode == 0 and not (root / "pip-calls").exists(), (wanted, done.stderr)
    subprocess.run([root / "scripts" / "setup-env", "gpu"], check=True)
    assert "-e .[desk,gpu,test]" in (root / "pip-calls").read_text(), "a refresh keeps the extras already there"


def test_ci_installs_what_qt_needs_on_a_real_display() -> None:
    ci = (Path(__file__).parents[1] / ".ci" / "run").read_text()
    assert re.search(r"packages=\([^)]*\blibxcb-cursor0\b", ci)
