"""What several commands share: the slide and region options, output checks, progress bars, and one job
through the running daemon."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from antoni_bridge.errors import BridgeError

MIN_TILE, MAX_TILE = 16, 4096  # pixels per tile side


def output_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--out", type=Path, required=True, help="HDF5 file to write")
    command.add_argument("--overview", type=Path, help="write a PNG with tissue, region and tiles drawn")


def region_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--mpp", type=float, default=0.5, help="microns per pixel of the tiles (default 0.5)")
    command.add_argument("--size", type=int, default=224, help="tile size in pixels (default 224)")
    command.add_argument("--min-tissue", type=float, default=0.0, help="keep tiles with more tissue than this")
    where = command.add_mutually_exclusive_group()
    where.add_argument("--region", help="x,y,width,height in level-0 pixels")
    where.add_argument("--geojson", type=Path, help="QuPath GeoJSON export holding the region")
    command.add_argument("--name", help="which annotation of --geojson (name, class or id)")
    command.add_argument("--slide-mpp", type=float, help="microns per pixel of the slide, when its file has none")


def slide_request(args: argparse.Namespace, slide: Path):  # -> SlideRequest (imported lazily: --help stays fast)
    from antoni_bridge.slides.grid import GridSpec
    from antoni_bridge.slides.planning import SlideRequest
    from antoni_bridge.slides.reader import check_input_file
    from antoni_bridge.slides.regions import Region, read_geojson_region

    check_input_file(slide)
    if args.name and not args.geojson:
        raise BridgeError("--name picks an annotation of --geojson, but no --geojson was given.", "add --geojson FILE")
    check_grid_numbers(args)
    region = None
    if args.region:
        region = Region.parse_rectangle(args.region)
    elif args.geojson:
        region = read_geojson_region(args.geojson, args.name)
    spec = GridSpec(mpp=args.mpp, size=args.size, min_tissue=args.min_tissue)
    return SlideRequest(path=slide, region=region, spec=spec, slide_mpp=args.slide_mpp)


def check_grid_numbers(args: argparse.Namespace) -> None:
    """Each bad number is named with the range it must lie in."""
    trained = "the defaults (--mpp 0.5 --size 224 --min-tissue 0) are what ANTONI-Alpha was trained on"
    if not (math.isfinite(args.mpp) and args.mpp > 0):
        raise BridgeError(f"--mpp {args.mpp} is not a positive number of microns per pixel.", trained)
    if not MIN_TILE <= args.size <= MAX_TILE:
        raise BridgeError(f"--size {args.size} is outside {MIN_TILE}..{MAX_TILE} pixels per tile side.", trained)
    if not (math.isfinite(args.min_tissue) and 0 <= args.min_tissue < 1):
        raise BridgeError(f"--min-tissue {args.min_tissue} is outside [0, 1): it is a fraction of a tile.", trained)
    if args.slide_mpp is not None and not (math.isfinite(args.slide_mpp) and args.slide_mpp > 0):
        raise BridgeError(
            f"--slide-mpp {args.slide_mpp} is not a positive number of microns per pixel.",
            "0.25 for a 40x scan, 0.5 for a 20x scan",
        )


def check_outputs(args: argparse.Namespace, *inputs: Path | None) -> None:
    """Outputs never replace an input (a slide, annotations) or each other, nor a file that is not ours."""
    import h5py

    outputs = [p for p in (args.out, getattr(args, "overview", None)) if p is not None]
    given = [p.resolve() for p in inputs if p is not None]
    for out in outputs:
        if out.resolve() in given:
            raise BridgeError(
                f"The output {out} is one of the inputs; it would be overwritten.", "choose another --out"
            )
    if len({p.resolve() for p in outputs}) < len(outputs):
        raise BridgeError("--out and --overview name the same file.", "give them different names")
    if args.out.is_file() and not h5py.is_hdf5(args.out):
        raise BridgeError(
            f"{args.out} exists and is not an HDF5 file; it will not be replaced.", "choose another --out"
        )


def run_job(type_: str, content: dict[str, Any], on_token=None) -> dict[str, Any]:
    """One job through the running daemon, with progress bars; the content of its `done`."""
    from antoni_bridge.client import Client
    from antoni_bridge.engine import Cancelled

    with Client() as client, ProgressBars() as bars:

        def token(text: str) -> None:
            bars.close()  # the answer streams below the finished bars
            on_token(text)

        try:
            return client.run_job(type_, content, on_progress=bars.update, on_token=token if on_token else None)
        except Cancelled as exc:
            raise BridgeError(f"The daemon cancelled the job ({exc}).", "ask again") from None


class ProgressBars:
    """One tqdm bar per multi-step stage, showing done/total and the stage's rate."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None
        self.stage = ""

    def update(self, progress) -> None:  # progress: planning.Progress
        if progress.total <= 1:  # one-step stages finish too fast for a bar
            return
        if progress.stage != self.stage:
            self.close()
            self.stage = progress.stage
            unit = "tile" if progress.stage == "tile-embedding" else "step"
            self.bar = tqdm(
                total=progress.total,
                initial=progress.done,
                desc=progress.stage,
                unit=unit,
                leave=False,
                file=sys.stderr,
            )
        if self.bar is not None:
            self.bar.total = progress.total
            self.bar.update(progress.done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> ProgressBars:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
