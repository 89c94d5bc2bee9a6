"""What the benchmark scripts share: the slide to measure on (the demo slide unless one is given)."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from antoni_bridge.slides.demo import write_demo_slide


def slide_arguments(doc: str, repeats: int, tiles: int | None = None) -> argparse.Namespace:
    """The slide, repeats and threads; `--tiles` too for benchmarks that size their data by tiles."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("slide", nargs="?", type=Path, help="default: a fresh demo slide")
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--threads", type=int, default=None, help="default: all cores")
    if tiles is not None:
        parser.add_argument("--tiles", type=int, default=tiles, help=f"tiles to emulate (default {tiles:,})")
    args = parser.parse_args()
    if args.slide is None:
        args.slide = Path(tempfile.mkdtemp()) / "demo.svs"
        write_demo_slide(args.slide, progress=False)
    return args
