"""Tissue detection time on the demo slide (target: under 1 s), against reading the level it uses.

Usage: python benchmarks/tissue_detection.py [SLIDE] [--repeats R]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from antoni_bridge.slides.demo import write_demo_slide
from antoni_bridge.slides.reader import Slide
from antoni_bridge.slides.tissue import ThresholdTissueDetector


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("slide", nargs="?", type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    path = args.slide
    if path is None:
        path = Path(tempfile.mkdtemp()) / "demo.svs"
        write_demo_slide(path, progress=False)
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
