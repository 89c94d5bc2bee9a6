"""Tissue detection time on the demo slide (target: under 1 s), against reading the level it uses.

Usage: python -m benchmarks.tissue_detection [SLIDE] [--repeats R]
"""

from __future__ import annotations

import statistics
import time

from antoni_bridge.slides.reader import Slide
from antoni_bridge.slides.tissue import ThresholdTissueDetector
from benchmarks.common import slide_arguments


def main() -> None:
    args = slide_arguments(__doc__, repeats=5)
    path = args.slide
    detector = ThresholdTissueDetector()
    with Slide(path) as slide:
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            mask = detector.detect(slide)
            times.append(time.perf_counter() - start)
        level = max(i for i, d in enumerate(slide.level_downsamples) if d <= detector.mpp / slide.mpp * 1.01)
        start = time.perf_counter()
        slide.read_level(level)
        read = time.perf_counter() - start
    print(
        f"slide {path.name} {slide.dimensions[0]}x{slide.dimensions[1]} px; mask {mask.labels.shape[1]}x"
        f"{mask.labels.shape[0]}, {mask.contour_count} pieces"
    )
    print(
        f"tissue detection: median {statistics.median(times) * 1000:.0f} ms over {args.repeats} runs "
        f"(of which reading level {level}: {read * 1000:.0f} ms)"
    )


if __name__ == "__main__":
    main()
