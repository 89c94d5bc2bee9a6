"""Finding tissue on a low-resolution level of the slide.

The default detector needs no weights: colour saturation separates stained tissue from glass, pen ink
is recognised by its hue, and morphology joins what belongs together. Each connected piece gets a
contour index (largest first) that every tile later carries. A learned segmenter slots in by
implementing `TissueDetector.detect` and returning the same `TissueMask`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from skimage import color, filters, measure, morphology, transform

from antoni_bridge.errors import BridgeError
from antoni_bridge.slides.levels import coarsest_level
from antoni_bridge.slides.reader import Slide

Step = Callable[[int, int], None]  # (done, total): called between pieces of work; may raise to stop it
STRIP_PIXELS = 4_000_000  # read at a time, so a cancel is seen within a fraction of a second
ANALYSIS_STEPS = 4  # after reading: resize, colour, glass and pen, morphology


def no_step(done: int, total: int) -> None:
    """The default step callback: nothing to report, nothing to stop."""


@dataclass(frozen=True)
class TissueMask:
    """Labelled tissue at a low resolution: 0 is background, k > 0 is contour index k - 1."""

    labels: np.ndarray
    downsample: float  # level-0 pixels per mask pixel
    pen: np.ndarray | None = None  # where pen ink was rejected, for the overview

    @property
    def contour_count(self) -> int:
        return int(self.labels.max())

    def tissue_fraction(self, boxes: np.ndarray) -> np.ndarray:
        """Fraction of tissue inside each level-0 box (x0, y0, x1, y1), from a summed-area table."""
        table = np.pad((self.labels > 0).astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        cells = self._cells(boxes)
        x0, y0, x1, y1 = cells.T
        inside = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
        area = np.maximum((x1 - x0) * (y1 - y0), 1)
        return inside / area

    def contour_of(self, boxes: np.ndarray) -> np.ndarray:
        """Contour index of each box: the piece under its centre, else the piece covering most of it."""
        cells = self._cells(boxes)
        cx = ((cells[:, 0] + cells[:, 2] - 1) // 2).clip(0, self.labels.shape[1] - 1)
        cy = ((cells[:, 1] + cells[:, 3] - 1) // 2).clip(0, self.labels.shape[0] - 1)
        label = self.labels[cy, cx].astype(np.int64)
        for i in np.flatnonzero(label == 0):
            x0, y0, x1, y1 = cells[i]
            counts = np.bincount(self.labels[y0:y1, x0:x1].ravel(), minlength=2)
            counts[0] = 0
            label[i] = int(counts.argmax()) if counts.any() else 0
        return (label - 1).astype(np.int32)

    def _cells(self, boxes: np.ndarray) -> np.ndarray:
        h, w = self.labels.shape
        cells = np.empty((len(boxes), 4), dtype=np.int64)
        cells[:, [0, 1]] = np.floor(boxes[:, [0, 1]] / self.downsample)
        cells[:, [2, 3]] = np.ceil(boxes[:, [2, 3]] / self.downsample)
        cells[:, [0, 2]] = cells[:, [0, 2]].clip(0, w)
        cells[:, [1, 3]] = cells[:, [1, 3]].clip(0, h)
        return cells


class TissueDetector(Protocol):
    """Anything that turns a slide into a `TissueMask` (thresholds today, a learned model later)."""

    def detect(self, slide: Slide, step: Step = no_step) -> TissueMask: ...


@dataclass(frozen=True)
class ThresholdTissueDetector:
    """Difference from the glass + pen rejection + morphology, at about `mpp` um/px."""

    mpp: float = 8.0
    saturation_margin: float = 0.04  # tissue is this much more saturated than the glass ...
    brightness_margin: float = 0.06  # ... or this much darker
    min_value: float = 0.12  # darker is black ink or scanner dirt
    min_area_um2: float = 20_000.0  # smaller pieces are dust or debris
    fill_holes_um2: float = 20_000.0  # smaller holes are filled, larger ones stay holes
    close_um: float = 32.0
    reject_pen: bool = True
    max_mask_pixels: int = 64_000_000

    def detect(self, slide: Slide, step: Step = no_step) -> TissueMask:
        """The tissue mask; `step` is called between strips read and between analysis stages, which is
        where a daemon job's cancel is seen."""
        rgb, downsample = self._low_resolution(slide, step)
        strips = _strip_count(slide.level_dimensions[self._level(slide)])
        step(strips + 1, strips + ANALYSIS_STEPS)
        hsv = color.rgb2hsv(rgb)
        hue, sat, val = hsv[..., 0], hsv[..., 1], hsv[..., 2]
        step(strips + 2, strips + ANALYSIS_STEPS)
        pen = self._pen(hue, sat, val) if self.reject_pen else np.zeros(sat.shape, dtype=bool)
        tissue = self._differs_from_glass(sat, val) & (val >= self.min_value) & ~pen
        mask_mpp = slide.mpp * downsample
        step(strips + 3, strips + ANALYSIS_STEPS)
        tissue = self._clean(tissue, mask_mpp) & ~pen
        tissue = morphology.remove_small_objects(tissue, max_size=self._pixels(self.min_area_um2, mask_mpp))
        step(strips + ANALYSIS_STEPS, strips + ANALYSIS_STEPS)
        return TissueMask(labels=_label_by_area(tissue), downsample=downsample, pen=pen)

    def _level(self, slide: Slide) -> int:
        """The coarsest level that is still at least as fine as `mpp`."""
        return coarsest_level(slide.level_downsamples, self.mpp / slide.mpp)

    def _low_resolution(self, slide: Slide, step: Step) -> tuple[np.ndarray, float]:
        """Read the level `_level` picks, strip by strip, then shrink it to `mpp`."""
        wanted = self.mpp / slide.mpp
        level = self._level(slide)
        w, h = slide.level_dimensions[level]
        if w * h > self.max_mask_pixels:
            raise BridgeError(
                f"{slide.path.name} has no level small enough to find tissue on (smallest {w}x{h} px).",
                "convert it to a pyramidal TIFF (e.g. with QuPath's or vips' pyramid export)",
            )
        rgb = _read_in_strips(slide, level, step)
        downsample = slide.level_downsamples[level]
        factor = wanted / downsample
        if factor > 1.5:
            shape = (max(1, round(h / factor)), max(1, round(w / factor)))
            rgb = (transform.resize(rgb, shape, anti_aliasing=True, preserve_range=True)).astype(np.uint8)
            downsample = slide.dimensions[0] / shape[1]
        return rgb, float(downsample)

    def _differs_from_glass(self, sat: np.ndarray, val: np.ndarray) -> np.ndarray:
        """More saturated or darker than the glass, which is the palest, brightest part of the slide.

        Saturation alone misses pale tissue (fat, mucin, faint haematoxylin); brightness catches it.
        """
        sat = filters.median(sat, morphology.disk(1))
        val = filters.median(val, morphology.disk(1))
        glass_sat = float(np.percentile(sat, 5))
        glass_val = float(np.percentile(val, 95))
        return (sat > glass_sat + self.saturation_margin) | (val < glass_val - self.brightness_margin)

    @staticmethod
    def _pen(hue: np.ndarray, sat: np.ndarray, val: np.ndarray) -> np.ndarray:
        """Green, blue and black marker ink; H&E and IHC stains are pink, purple, brown or pale blue."""
        green = (hue > 0.20) & (hue < 0.52) & (sat > 0.25)
        blue = (hue >= 0.52) & (hue < 0.72) & (sat > 0.45)
        black = val < 0.12
        pen = green | blue | black
        return morphology.dilation(pen, morphology.disk(1))

    def _clean(self, tissue: np.ndarray, mask_mpp: float) -> np.ndarray:
        radius = max(1, round(self.close_um / mask_mpp / 2))
        tissue = morphology.closing(tissue, morphology.disk(radius))
        return morphology.remove_small_holes(tissue, max_size=self._pixels(self.fill_holes_um2, mask_mpp))

    @staticmethod
    def _pixels(area_um2: float, mask_mpp: float) -> int:
        return max(1, round(area_um2 / mask_mpp**2))


def _strip_count(size: tuple[int, int]) -> int:
    width, height = size
    return max(1, -(-width * height // STRIP_PIXELS))


def _read_in_strips(slide: Slide, level: int, step: Step) -> np.ndarray:
    """A whole level, read in bands of rows with `step` called after each."""
    width, height = slide.level_dimensions[level]
    strips, downsample = _strip_count((width, height)), slide.level_downsamples[level]
    rows = -(-height // strips)
    out = np.empty((height, width, 3), dtype=np.uint8)
    for index, top in enumerate(range(0, height, rows)):
        band = min(rows, height - top)
        out[top : top + band] = slide.read_region((0, round(top * downsample)), level, (width, band))
        step(index + 1, strips + ANALYSIS_STEPS)
    return out


def _label_by_area(tissue: np.ndarray) -> np.ndarray:
    """Connected pieces numbered 1..K, largest first, so contour 0 is the main piece."""
    labels, count = measure.label(tissue, connectivity=2, return_num=True)
    if count == 0:
        return labels.astype(np.int32)
    areas = np.bincount(labels.ravel())[1:]
    order = np.argsort(-areas, kind="stable")
    relabel = np.zeros(count + 1, dtype=np.int32)
    relabel[order + 1] = np.arange(1, count + 1, dtype=np.int32)
    return relabel[labels]
