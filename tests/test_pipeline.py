"""Slide to latents end to end: feature files, the cache, and a real process killed mid-slide."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from antoni_bridge.encoders.pipeline import EmbedSettings, Encoders, embed_slide
from antoni_bridge.features.cache import FeatureCache
from antoni_bridge.features.h5 import read_feature_file, write_feature_file
from antoni_bridge.slides.demo import DemoLayout
from antoni_bridge.slides.planning import SlideRequest
from antoni_bridge.slides.regions import Region

SIXTEEN = EmbedSettings(batch_size=16)


@pytest.fixture(scope="module")
def encoders(demo_encoders: tuple[Path, Path]) -> Encoders:
    return Encoders.load(str(demo_encoders[0]), str(demo_encoders[1]))


def test_embedding_writes_the_trident_layout_and_a_repeat_hits_the_cache(
    demo_40x: tuple[Path, DemoLayout], encoders: Encoders, tmp_path: Path
) -> None:
    cache = FeatureCache(tmp_path / "cache")
    stages: list[str] = []
    first = embed_slide(SlideRequest(demo_40x[0]), encoders, cache, lambda p: stages.append(p.stage))
    assert not first.cache_hit
    assert (
        list(dict.fromkeys(stages))[:3] == ["reading", "tissue", "tiling"]
        and "tile-embedding" in stages
        and stages[-1] == "slide-encoding"
    )
    out = tmp_path / "slide.h5"
    write_feature_file(out, first.data)
    with h5py.File(out) as h5:
        n = len(h5["coords"])
        assert h5["coords"].dtype == np.int64 and h5["coords"].shape == (n, 2)
        assert h5["contour_index"].shape == (n,)
        assert h5["features"].shape == (n, 96) and h5["features"].dtype == np.float32
        assert h5["latents"].shape == (513, 64)
        assert dict(h5["coords"].attrs) == {
            "patch_size": 224,
            "patch_size_level0": 448,
            "level0_magnification": 40.0,
            "target_magnification": 20,
            "overlap": 0,
            "name": "demo-40x",
        }
        assert h5.attrs["slide_encoder"] == "prism-demo" and h5.attrs["mpp"] == 0.5
        assert h5.attrs["slide_fingerprint"] and h5.attrs["tile_encoder"].endswith("antoni_bridge_demo")
    again = embed_slide(SlideRequest(demo_40x[0]), encoders, cache)
    assert again.cache_hit
    np.testing.assert_array_equal(again.data.latents, first.data.latents)


def test_a_region_is_its_own_cache_entry(demo_40x: tuple[Path, DemoLayout], encoders: Encoders, tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path / "cache")
    whole = embed_slide(SlideRequest(demo_40x[0]), encoders, cache)
    region = embed_slide(SlideRequest(demo_40x[0], region=Region.rectangle(1500, 1500, 2500, 2500)), encoders, cache)
    assert not region.cache_hit and len(region.data.coords) < len(whole.data.coords)
    assert len(list((tmp_path / "cache").glob("*.h5"))) == 2
    assert region.data.attrs["region"]["type"] == "Polygon" and whole.data.attrs["region"] is None
    stored = sorted(str(read_feature_file(p).attrs["region"]) for p in (tmp_path / "cache").glob("*.h5"))
    assert stored[0] == "None" and "Polygon" in stored[1], "the region geometry is stored with its entry"


def test_a_damaged_cache_entry_is_recomputed(
    demo_40x: tuple[Path, DemoLayout], encoders: Encoders, tmp_path: Path
) -> None:
    cache = FeatureCache(tmp_path / "cache")
    embed_slide(SlideRequest(demo_40x[0]), encoders, cache)
    (entry,) = (tmp_path / "cache").glob("*.h5")
    entry.write_bytes(entry.read_bytes()[:5000])
    result = embed_slide(SlideRequest(demo_40x[0]), encoders, cache)
    assert not result.cache_hit
    assert read_feature_file(entry).latents.shape == (513, 64)


KILLED_RUN = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from antoni_bridge.encoders.pipeline import Encoders, EmbedSettings, embed_slide
    from antoni_bridge.slides.planning import SlideRequest
    from antoni_bridge.features.cache import FeatureCache
    slide, tile, enc, cache = sys.argv[1:5]
    encoders = Encoders.load(tile, enc)
    def slow(progress):
        if progress.stage == "tile-embedding":
            print("progress", progress.done, flush=True)
            time.sleep(0.3)  # the kill lands while batches are still to come
    embed_slide(SlideRequest(Path(slide)), encoders, FeatureCache(Path(cache)), slow, EmbedSettings(16, None, 16))
    print("finished", flush=True)
    """
)


def test_killing_a_run_leaves_no_entry_and_the_next_run_resumes_to_the_same_result(
    demo_40x: tuple[Path, DemoLayout], demo_encoders: tuple[Path, Path], encoders: Encoders, tmp_path: Path
) -> None:
    cache_dir = tmp_path / "cache"
    args = [sys.executable, "-c", KILLED_RUN, str(demo_40x[0]), *map(str, demo_encoders), str(cache_dir)]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = process.stdout.readline()  # type: ignore[union-attr]
        if line.startswith("progress") and int(line.split()[1]) >= 32:  # two batches of 16 saved; 51 tiles in all
            break
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not list(cache_dir.glob("*.h5")), "a killed run must not leave a finished entry"
    saved = sorted((cache_dir / "partial").glob("*/*.npy"))
    assert saved, "finished batches were saved before the kill"
    for part in saved:
        assert np.load(part).shape[1] == 96  # every saved part is whole

    resumed = embed_slide(SlideRequest(demo_40x[0]), encoders, FeatureCache(cache_dir), settings=SIXTEEN)
    assert resumed.resumed_tiles >= 32
    assert not list(cache_dir.glob(".*.tmp")), "the final write left no temporary file"
    fresh = embed_slide(SlideRequest(demo_40x[0]), encoders, FeatureCache(tmp_path / "fresh"), settings=SIXTEEN)
    np.testing.assert_allclose(resumed.data.features, fresh.data.features, atol=1e-5)
    np.testing.assert_allclose(resumed.data.latents, fresh.data.latents, atol=1e-5)
    assert not (cache_dir / "partial").exists() or not any((cache_dir / "partial").iterdir())


KILLED_WRITE = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from antoni_bridge.encoders.pipeline import Encoders, EmbedSettings, embed_slide
    from antoni_bridge.slides.planning import SlideRequest
    from antoni_bridge.features import h5
    from antoni_bridge.features.cache import FeatureCache
    slide, tile, enc, cache = sys.argv[1:5]
    real_replace = os.replace
    def die_on_the_entry(src, dst):
        if str(dst).endswith(".h5"):
            os._exit(9)  # killed between writing the entry and renaming it into place
        real_replace(src, dst)
    h5.os.replace = die_on_the_entry
    embed_slide(SlideRequest(Path(slide)), Encoders.load(tile, enc), FeatureCache(Path(cache)),
                settings=EmbedSettings(16, None, 16))
    """
)


def test_killed_while_writing_the_entry_leaves_no_entry_and_resumes_from_every_saved_tile(
    demo_40x: tuple[Path, DemoLayout], demo_encoders: tuple[Path, Path], encoders: Encoders, tmp_path: Path
) -> None:
    cache_dir = tmp_path / "cache"
    args = [sys.executable, "-c", KILLED_WRITE, str(demo_40x[0]), *map(str, demo_encoders), str(cache_dir)]
    assert subprocess.run(args, timeout=300).returncode == 9
    assert not list(cache_dir.glob("*.h5")), "no entry: the kill came before the rename"
    assert list(cache_dir.glob(".*.tmp")), "the finished temporary file was left behind by the kill"
    result = embed_slide(SlideRequest(demo_40x[0]), encoders, FeatureCache(cache_dir), settings=SIXTEEN)
    assert not result.cache_hit and result.resumed_tiles > 0
    assert read_feature_file(next(cache_dir.glob("*.h5"))).latents.shape == (513, 64)


def test_damaged_partial_parts_are_dropped_not_fatal(tmp_path: Path) -> None:
    from antoni_bridge.features.cache import PartialFeatures

    partial = PartialFeatures(tmp_path / "partial")
    partial.save(0, np.ones((16, 8)))
    partial.save(16, np.ones((16, 8)))
    partial.save(32, np.ones((16, 8)))
    (tmp_path / "partial" / "000000016.npy").write_bytes(b"")  # what a power cut can leave
    assert len(partial.resume(100, 8)) == 16
    assert sorted(p.name for p in (tmp_path / "partial").glob("*.npy")) == ["000000000.npy"]
    assert len(partial.resume(100, 4)) == 0, "another width is not resumed"


def test_a_cache_hit_carries_the_current_requests_names(
    demo_40x: tuple[Path, DemoLayout], encoders: Encoders, tmp_path: Path
) -> None:
    cache = FeatureCache(tmp_path / "cache")
    square = Region.rectangle(1500, 1500, 2500, 2500).geometry
    copy = tmp_path / "{case 7}.svs"  # a name that looks like JSON
    copy.write_bytes(demo_40x[0].read_bytes())
    first = embed_slide(SlideRequest(demo_40x[0], region=Region(square, "tumour")), encoders, cache)
    second = embed_slide(SlideRequest(copy, region=Region(square, "stroma")), encoders, cache)
    assert second.cache_hit
    assert (first.data.attrs["region_name"], second.data.attrs["region_name"]) == ("tumour", "stroma")
    out = tmp_path / "out.h5"
    write_feature_file(out, second.data)
    assert read_feature_file(out).attrs["slide_name"] == "{case 7}.svs"
