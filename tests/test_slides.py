"""Slides: reading, tissue, grids and regions, and the fast tile stream, on real demo SVS files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import shapely
from shapely.geometry import Polygon
from skimage.transform import resize

from antoni_bridge.errors import BridgeError
from antoni_bridge.slides import tile_stream
from antoni_bridge.slides.demo import DemoLayout
from antoni_bridge.slides.grid import GridSpec, plan_grid
from antoni_bridge.slides.reader import Slide
from antoni_bridge.slides.regions import MAX_REGION_VERTICES, Region, clip_to_slide
from antoni_bridge.slides.tile_stream import iter_tile_batches
from antoni_bridge.slides.tissue import ThresholdTissueDetector


def test_demo_slide_reads_as_aperio_svs(demo_40x: tuple[Path, DemoLayout]) -> None:
    with Slide(demo_40x[0]) as slide:
        assert slide.properties["tiffslide.vendor"] == "aperio"
        assert slide.mpp == pytest.approx(0.25)
        assert slide.objective_power == 40
        assert slide.dimensions == (8000, 6000)
        assert [round(d) for d in slide.level_downsamples] == [1, 4, 16]
        assert all(slide.native_level(level) is not None for level in range(slide.level_count))


def test_tissue_found_where_the_layout_has_it_and_pen_ink_rejected(demo_40x: tuple[Path, DemoLayout]) -> None:
    path, layout = demo_40x
    with Slide(path) as slide:
        mask = ThresholdTissueDetector().detect(slide)
    truth = resize(layout.tissue, mask.labels.shape, order=0) > 0
    pen = resize(layout.pen, mask.labels.shape, order=0) > 0
    found = mask.labels > 0
    assert (truth & found).sum() / (truth | found).sum() > 0.9
    assert not (found & pen).any()
    assert mask.contour_count == len(layout.pieces) >= 2, "each piece is found, debris is not"
    areas = np.bincount(mask.labels.ravel())[1:]
    assert list(areas) == sorted(areas, reverse=True), "contour 0 is the largest piece"


def test_a_large_hole_stays_a_hole(tmp_path: Path) -> None:
    """On a slide of the demo slide's size (5 x 3.75 mm): this hole is larger than the detector fills."""
    from antoni_bridge.slides.demo import write_demo_slide
    from tests.conftest import LAYOUT

    layout = write_demo_slide(tmp_path / "demo.svs", seed=LAYOUT, progress=False)
    piece = next(p for p in layout.pieces if p.hole)
    with Slide(tmp_path / "demo.svs") as slide:
        mask = ThresholdTissueDetector().detect(slide)
    hole_x, hole_y = (c / mask.downsample for c in piece.hole)
    assert mask.labels[round(hole_y), round(hole_x)] == 0, "a large hole stays a hole"
    ring_x = piece.hole[0] + 0.38 * piece.radius  # past the hole's edge, inside the piece's
    assert layout.tissue[round(piece.hole[1] / layout.downsample), round(ring_x / layout.downsample)]
    assert mask.labels[round(hole_y), round(ring_x / mask.downsample)] > 0, "the ring around the hole is tissue"


def test_no_tissue_on_blank_glass(tmp_path: Path) -> None:
    import tifffile

    from antoni_bridge.slides.demo import GLASS_RGB

    glass = np.empty((2048, 2048, 3), dtype=np.uint8)
    glass[:] = GLASS_RGB
    glass += np.random.default_rng(0).integers(0, 3, glass.shape, dtype=np.uint8)
    path = tmp_path / "glass.tif"
    tifffile.imwrite(path, glass, tile=(256, 256), resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    with Slide(path) as slide:
        assert ThresholdTissueDetector().detect(slide).contour_count == 0


def test_40x_and_20x_scans_give_the_same_grid_in_microns(demo_40x: tuple[Path, DemoLayout], demo_20x: Path) -> None:
    micron_sets = []
    for path in (demo_40x[0], demo_20x):
        with Slide(path) as slide:
            grid = plan_grid(slide, ThresholdTissueDetector().detect(slide), GridSpec())
            assert grid.level0_size * slide.mpp == pytest.approx(112.0)
            assert grid.read_size == 448 if slide.mpp == 0.25 else grid.read_size == 224
            micron_sets.append({tuple(xy) for xy in np.round(grid.coords * slide.mpp).astype(int)})
    a, b = micron_sets
    assert len(a & b) / len(a | b) > 0.95, "the same tissue gives the same tiles (edges may differ by a tile)"


def test_level_choice_on_a_pyramid_that_is_not_powers_of_two(demo_odd_pyramid: Path) -> None:
    with Slide(demo_odd_pyramid) as slide:
        tissue = ThresholdTissueDetector().detect(slide)
        at_half = plan_grid(slide, tissue, GridSpec(mpp=0.5))
        at_one = plan_grid(slide, tissue, GridSpec(mpp=1.0))
        assert (at_half.level, at_half.read_size) == (0, 448)  # level 1 (3x) would be too coarse for 2x
        assert at_one.level == 1 and at_one.read_size == round(896 / slide.level_downsamples[1])
        assert slide.level_downsamples[1] != 3.0, "the level's downsample is not a whole number"
        size = (at_one.read_size, at_one.read_size)
        for batch in iter_tile_batches(slide, at_one, batch_size=32):  # every tile, the edges included
            for pixels, index in zip(batch.pixels, batch.indices, strict=True):
                x, y = at_one.coords[index]
                np.testing.assert_array_equal(pixels, slide.read_region((int(x), int(y)), 1, size))


def test_polygon_region_with_hole_restricts_tiles_to_centres_inside(demo_40x: tuple[Path, DemoLayout]) -> None:
    outer = [(1000, 1000), (6500, 1200), (6000, 5200), (1500, 5000)]
    hole = [(2500, 2500), (4500, 2500), (4500, 4000), (2500, 4000)]
    region = Region(Polygon(outer, [hole]), name="tumour")
    with Slide(demo_40x[0]) as slide:
        tissue = ThresholdTissueDetector().detect(slide)
        grid = plan_grid(slide, tissue, GridSpec(), region)
        whole = plan_grid(slide, tissue, GridSpec())
    step = grid.level0_size
    centres = grid.coords + step / 2
    assert shapely.contains_xy(Polygon(outer), centres[:, 0], centres[:, 1]).all()
    assert not shapely.contains_xy(Polygon(hole), centres[:, 0], centres[:, 1]).any()
    # Independently: every lattice tile with tissue whose centre is in the region is kept, and no other.
    x0 = (1000 + 6500 - np.ceil(5500 / step) * step) / 2
    y0 = (1000 + 5200 - np.ceil(4200 / step) * step) / 2
    xs = np.round(x0 + np.arange(np.ceil(5500 / step)) * step)
    ys = np.round(y0 + np.arange(np.ceil(4200 / step)) * step)
    expected = set()
    for y in ys:
        for x in xs:
            box = np.array([[x, y, x + step, y + step]])
            inside = region.geometry.contains(shapely.Point(x + step / 2, y + step / 2))
            if inside and tissue.tissue_fraction(box)[0] > 0:
                expected.add((int(x), int(y)))
    assert {tuple(map(int, xy)) for xy in grid.coords} == expected
    assert 0 < len(grid) < len(whole)


def test_tile_stream_equals_read_region_and_decodes_each_stored_tile_once(
    demo_40x: tuple[Path, DemoLayout], monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[tuple[int, int]] = []
    original = tile_stream._NativeReader._decode

    def counting(self: tile_stream._NativeReader, key: tuple[int, int]) -> np.ndarray:
        decoded.append(key)
        return original(self, key)

    monkeypatch.setattr(tile_stream._NativeReader, "_decode", counting)
    with Slide(demo_40x[0]) as slide:
        grid = plan_grid(slide, ThresholdTissueDetector().detect(slide), GridSpec())
        seen = []
        for batch in iter_tile_batches(slide, grid, batch_size=16, threads=2):
            seen.extend(batch.indices)
            for j in (0, len(batch.indices) - 1):
                x, y = grid.coords[batch.indices[j]]
                expected = slide.read_region((int(x), int(y)), grid.level, (grid.read_size, grid.read_size))
                np.testing.assert_array_equal(batch.pixels[j], expected)
    assert seen == list(range(len(grid)))
    assert len(decoded) == len(set(decoded)), "a stored tile was decoded twice in one pass"


def test_tile_stream_resumes_from_a_start_index(demo_40x: tuple[Path, DemoLayout]) -> None:
    with Slide(demo_40x[0]) as slide:
        grid = plan_grid(slide, ThresholdTissueDetector().detect(slide), GridSpec())
        full = np.concatenate([b.pixels for b in iter_tile_batches(slide, grid, batch_size=32)])
        tail = np.concatenate([b.pixels for b in iter_tile_batches(slide, grid, batch_size=32, start=50)])
    np.testing.assert_array_equal(full[50:], tail)


def test_region_errors_are_clear(demo_40x: tuple[Path, DemoLayout]) -> None:
    with Slide(demo_40x[0]) as slide:
        tissue = ThresholdTissueDetector().detect(slide)
        with pytest.raises(BridgeError, match="outside the slide"):
            plan_grid(slide, tissue, GridSpec(), Region.rectangle(90_000, 90_000, 500, 500))
        with pytest.raises(BridgeError, match="No tissue in the region"):
            plan_grid(slide, tissue, GridSpec(), Region.rectangle(10, 10, 400, 300))
        with pytest.raises(BridgeError, match="more than the limit"):
            plan_grid(slide, tissue, GridSpec(max_tiles=10))


def test_openslide_reader_gives_the_same_slide_and_tiles(demo_40x: tuple[Path, DemoLayout]) -> None:
    pytest.importorskip("openslide", reason="the openslide extra is not installed")
    with Slide(demo_40x[0]) as tiff, Slide(demo_40x[0], backend="openslide") as other:
        assert other.backend == "openslide" and other.native_level(0) is None
        assert (other.mpp, other.objective_power, other.dimensions) == (tiff.mpp, tiff.objective_power, tiff.dimensions)
        grid = plan_grid(tiff, ThresholdTissueDetector().detect(tiff), GridSpec())
        ours = next(iter_tile_batches(tiff, grid, batch_size=8))
        theirs = next(iter_tile_batches(other, grid, batch_size=8))
    assert np.abs(ours.pixels.astype(int) - theirs.pixels.astype(int)).mean() < 2, "same pixels up to JPEG decoders"


def test_a_slide_replaced_after_opening_is_not_misread(demo_40x: tuple[Path, DemoLayout], tmp_path: Path) -> None:
    copy = tmp_path / "copy.svs"
    copy.write_bytes(demo_40x[0].read_bytes())
    with Slide(copy) as slide:
        grid = plan_grid(slide, ThresholdTissueDetector().detect(slide), GridSpec())
        replacement = tmp_path / "other.svs"
        replacement.write_bytes(demo_40x[0].read_bytes()[:-10])
        replacement.replace(copy)
        with pytest.raises(BridgeError, match="changed on disk"):
            next(iter_tile_batches(slide, grid))


def test_a_region_partly_outside_is_clipped_and_one_wholly_outside_refused(demo_40x: tuple[Path, DemoLayout]) -> None:
    """One rule everywhere: the CLI used to refuse what the desk clipped."""
    inside = Region.rectangle(100, 100, 500, 500)
    assert clip_to_slide(inside, 8000, 6000) is inside
    clipped = clip_to_slide(
        Region.rectangle(
            -1000,
            5000,
            3000,
            10_000,
        ),
        8000,
        6000,
    )
    assert clipped.bounds == (0, 5000, 2000, 6000)
    with pytest.raises(BridgeError, match="lies outside the slide"):
        clip_to_slide(Region.rectangle(8000, 0, 10, 10), 8000, 6000)  # touching the edge is not overlapping
    with Slide(demo_40x[0]) as slide:
        tissue = ThresholdTissueDetector().detect(slide)
        huge = plan_grid(slide, tissue, GridSpec(), Region.rectangle(-5000, -5000, 10_000_000, 10_000_000))
        whole = plan_grid(slide, tissue, GridSpec())
    assert huge.region.bounds == (0, 0, 8000, 6000) and len(huge) > 0.9 * len(whole)


def _tangle(vertices: int, seed: int = 0) -> dict:
    """A polygon through random points: its outline crosses itself about vertices**2 / 10 times."""
    points = np.random.default_rng(seed).uniform(0, 8000, (vertices, 2)).tolist()
    return {"type": "Polygon", "coordinates": [[*points, points[0]]]}


def test_self_crossing_outlines_are_repaired_quickly_or_refused() -> None:
    """A 500-point tangle kept make_valid busy for two minutes; a long figure-of-eight took seconds."""
    bowtie = Region.from_geojson_dict(
        {"type": "Polygon", "coordinates": [[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]}
    )
    assert bowtie.geometry.area == pytest.approx(50)  # both lobes, not a sliver
    assert Region.from_geojson_dict(_tangle(60)).geometry.area > 0
    with pytest.raises(BridgeError, match="crosses itself more than"):
        Region.from_geojson_dict(_tangle(500))
    ring = [
        [5000 + 3000 * np.cos(a), 5000 + 3000 * np.sin(a)] for a in np.linspace(0, 2 * np.pi, MAX_REGION_VERTICES + 1)
    ]
    with pytest.raises(BridgeError, match="vertices; the limit is"):
        Region.from_geojson_dict({"type": "Polygon", "coordinates": [ring]})


def test_tissue_detection_reads_in_strips_and_stops_when_told(
    demo_40x: tuple[Path, DemoLayout], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon's cancel is seen between strips: detection on a large level took 24 s with no way out."""
    from antoni_bridge.slides import tissue as tissue_module

    with Slide(demo_40x[0]) as slide:
        whole = ThresholdTissueDetector().detect(slide)
        monkeypatch.setattr(tissue_module, "STRIP_PIXELS", 5000)  # level 2 (500x375) in 38 strips
        steps: list[tuple[int, int]] = []
        strips = ThresholdTissueDetector().detect(slide, lambda done, total: steps.append((done, total)))
        np.testing.assert_array_equal(strips.labels, whole.labels)
        assert len(steps) > 30 and steps[-1][0] == steps[-1][1]

        def stop(done: int, total: int) -> None:
            if done == 3:
                raise KeyboardInterrupt  # what a callback raises (the daemon's Cancelled) ends detection there

        with pytest.raises(KeyboardInterrupt):
            ThresholdTissueDetector().detect(slide, stop)
