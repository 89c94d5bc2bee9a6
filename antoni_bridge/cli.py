"""The `antoni-bridge` command: one entry point, one subcommand per job.

Every failure a user can cause ends in one line saying what went wrong, one line saying what to do,
and exit status 2; no traceback (unless --verbose).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from antoni_bridge import paths
from antoni_bridge.errors import BridgeError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return EXIT_USER_ERROR
    if not args.verbose:
        _quiet_libraries()
    try:
        return int(args.run(args) or 0)
    except BridgeError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        if args.verbose:
            raise
        return EXIT_USER_ERROR
    except OSError as exc:  # files the user named that cannot be written or read
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}", file=sys.stderr)
        print("hint: check the path and its permissions, and the free disk space", file=sys.stderr)
        if args.verbose:
            raise
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted; finished work is kept and the next run resumes from it", file=sys.stderr)
        return EXIT_INTERRUPTED


def _quiet_libraries() -> None:
    """Readers log their own account of damaged files; ours is the one a user should read."""
    for name in ("tifffile", "tiffslide"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", module="tiffslide")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="antoni-bridge", description="ANTONI-Alpha on whole slides, locally.")
    parser.add_argument("--verbose", action="store_true", help="show tracebacks of errors")
    commands = parser.add_subparsers(title="commands")

    demo_slide = commands.add_parser("make-demo-slide", help="write the demo slide (pyramidal JPEG SVS)")
    demo_slide.add_argument("out", type=Path)
    demo_slide.add_argument("--width", type=int, default=20_000)
    demo_slide.add_argument("--height", type=int, default=15_000)
    demo_slide.add_argument("--mpp", type=float, default=0.25)
    demo_slide.set_defaults(run=_make_demo_slide)

    demo_weights = commands.add_parser("make-demo-weights", help="write tiny random-weight demo encoders")
    demo_weights.add_argument("out", type=Path)
    demo_weights.set_defaults(run=_make_demo_weights)

    tiles = commands.add_parser("tiles", help="find tissue and write the tile grid (no model needed)")
    _slide_options(tiles)
    tiles.set_defaults(run=_tiles)

    embed = commands.add_parser("embed", help="tile features and slide latents of a slide or region")
    _slide_options(embed)
    _encoder_options(embed)
    embed.set_defaults(run=_embed)

    demo = commands.add_parser("demo", help="run the pipeline on the demo slide with the demo weights")
    demo.set_defaults(run=_demo)
    return parser


def _slide_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("slide", type=Path)
    command.add_argument("--out", type=Path, required=True, help="HDF5 file to write")
    command.add_argument("--mpp", type=float, default=0.5, help="microns per pixel of the tiles (default 0.5)")
    command.add_argument("--size", type=int, default=224, help="tile size in pixels (default 224)")
    command.add_argument("--min-tissue", type=float, default=0.0, help="keep tiles with more tissue than this")
    where = command.add_mutually_exclusive_group()
    where.add_argument("--region", help="x,y,width,height in level-0 pixels")
    where.add_argument("--geojson", type=Path, help="QuPath GeoJSON export holding the region")
    command.add_argument("--name", help="which annotation of --geojson (name, class or id)")
    command.add_argument("--overview", type=Path, help="write a PNG with tissue, region and tiles drawn")
    command.add_argument("--slide-mpp", type=float, help="microns per pixel of the slide, when its file has none")


def _encoder_options(command: argparse.ArgumentParser) -> None:
    from antoni_bridge.encoders.prism import PRISM_ID
    from antoni_bridge.encoders.virchow import VIRCHOW_ID

    command.add_argument("--tile-encoder", default=VIRCHOW_ID, help=f"folder or hub id (default {VIRCHOW_ID})")
    command.add_argument("--slide-encoder", default=PRISM_ID, help=f"folder or hub id (default {PRISM_ID})")
    command.add_argument("--demo", action="store_true", help="use the tiny demo encoders (made on first use)")
    command.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    command.add_argument("--precision", choices=("bf16", "fp16", "fp32"), default="bf16", help="on CUDA")
    command.add_argument("--batch-size", type=int, default=64)
    command.add_argument("--threads", type=int, default=None, help="tile decoding threads")
    command.add_argument("--cache-dir", type=Path, default=None, help="feature cache (default in ~/.cache)")


def _make_demo_slide(args: argparse.Namespace) -> int:
    from antoni_bridge.slides.demo import write_demo_slide

    if args.width < 1000 or args.height < 1000 or args.mpp <= 0:
        raise BridgeError("The demo slide needs at least 1000 x 1000 pixels and a positive mpp.", "")
    write_demo_slide(args.out, args.width, args.height, args.mpp)
    print(f"wrote {args.out} ({args.width} x {args.height} px at {args.mpp} um/px)")
    return 0


def _make_demo_weights(args: argparse.Namespace) -> int:
    from antoni_bridge.encoders.demo import write_demo_slide_encoder, write_demo_tile_encoder

    tile = write_demo_tile_encoder(args.out / "tile-encoder")
    slide = write_demo_slide_encoder(args.out / "slide-encoder")
    print(f"wrote demo tile encoder to {tile} and demo slide encoder to {slide} (random weights)")
    return 0


def _request(args: argparse.Namespace):  # -> SlideRequest, imported lazily to keep --help fast
    from antoni_bridge.encoders.pipeline import SlideRequest
    from antoni_bridge.slides.grid import GridSpec
    from antoni_bridge.slides.regions import Region, read_geojson_region

    if args.name and not args.geojson:
        raise BridgeError("--name picks an annotation of --geojson, but no --geojson was given.", "add --geojson FILE")
    if args.mpp <= 0 or args.size < 16 or not 0 <= args.min_tissue < 1:
        raise BridgeError("--mpp must be positive, --size at least 16, --min-tissue in [0, 1).", "")
    region = None
    if args.region:
        region = Region.parse_rectangle(args.region)
    elif args.geojson:
        region = read_geojson_region(args.geojson, args.name)
    spec = GridSpec(mpp=args.mpp, size=args.size, min_tissue=args.min_tissue)
    return SlideRequest(path=args.slide, region=region, spec=spec, slide_mpp=args.slide_mpp)


def _tiles(args: argparse.Namespace) -> int:
    from antoni_bridge.encoders.pipeline import feature_file, plan
    from antoni_bridge.features.h5 import write_feature_file
    from antoni_bridge.slides.overview import write_overview

    request = _request(args)
    planned = plan(request)
    with planned.slide as slide:
        if args.overview:
            write_overview(slide, planned.tissue, planned.grid, args.overview)
        write_feature_file(args.out, feature_file(slide, planned.grid, request))
        grid = planned.grid
        print(
            f"{len(grid):,} tiles of {grid.spec.size} px at {grid.spec.mpp} um/px over "
            f"{planned.tissue.contour_count} tissue pieces, read from level {grid.level} "
            f"({grid.read_size} px each), in {planned.seconds:.2f} s -> {args.out}"
        )
    return 0


def _embed(args: argparse.Namespace) -> int:
    from antoni_bridge.features.h5 import write_feature_file

    request = _request(args)
    result = _embed_request(args, request)
    write_feature_file(args.out, result.data)
    _report_embedding(result, args.out)
    if args.overview:
        _write_overview_for(request, result, args.overview)
    return 0


def _embed_request(args: argparse.Namespace, request):  # -> EmbedResult
    from antoni_bridge.encoders.pipeline import Encoders, embed_slide
    from antoni_bridge.features.cache import FeatureCache

    device = _device(args.device)
    if args.batch_size < 1 or (args.threads is not None and args.threads < 1):
        raise BridgeError("--batch-size and --threads must be at least 1.", "")
    tile_source, slide_source = _demo_encoders() if args.demo else (args.tile_encoder, args.slide_encoder)
    encoders = Encoders.load(str(tile_source), str(slide_source), device=device, precision=args.precision)
    cache = FeatureCache(args.cache_dir or paths.feature_cache_dir())
    with _ProgressBars() as bars:
        return embed_slide(request, encoders, cache, bars.update, batch_size=args.batch_size, threads=args.threads)


def _report_embedding(result, out: Path) -> None:
    data = result.data
    timings = ", ".join(f"{k.removesuffix('_s')} {v:.2f} s" for k, v in result.timings.items())
    source = (
        "from the cache"
        if result.cache_hit
        else f"resumed {result.resumed_tiles:,} tiles"
        if result.resumed_tiles
        else "computed"
    )
    demo = (
        " [demo encoders: random weights, the numbers mean nothing]"
        if "demo" in str(data.attrs.get("slide_encoder"))
        else ""
    )
    print(
        f"{len(data.coords):,} tiles -> features {tuple(data.features.shape)}, latents {tuple(data.latents.shape)} "
        f"({source}; {timings}) -> {out}{demo}"
    )


def _write_overview_for(request, result, out: Path) -> None:
    """The overview of an embedding, from the tissue and grid it used (nothing is detected again)."""
    from antoni_bridge.slides.overview import write_overview
    from antoni_bridge.slides.reader import Slide

    with Slide(request.path, mpp=request.slide_mpp) as slide:
        write_overview(slide, result.tissue, result.grid, out)


def _demo(args: argparse.Namespace) -> int:
    """The main job, offline: demo slide + demo encoders -> whole-slide and region latents, then a cache hit."""
    from antoni_bridge.encoders.pipeline import SlideRequest
    from antoni_bridge.features.h5 import write_feature_file
    from antoni_bridge.slides.demo import write_demo_slide
    from antoni_bridge.slides.regions import Region

    demo = paths.demo_dir()
    slide_path = demo / "demo-slide.svs"
    if not slide_path.is_file():
        print(f"making the demo slide {slide_path} (once)")
        write_demo_slide(slide_path)
    settings = argparse.Namespace(device=None, precision="bf16", batch_size=64, threads=None, cache_dir=None, demo=True)
    out = demo / "out"
    steps = [
        ("whole slide", SlideRequest(slide_path)),
        ("region 6000,4000,4000,3000", SlideRequest(slide_path, region=Region.rectangle(6000, 4000, 4000, 3000))),
        ("whole slide again", SlideRequest(slide_path)),
    ]
    results = []
    for index, (label, request) in enumerate(steps):
        print(f"\n== {label}")
        start = time.perf_counter()
        result = _embed_request(settings, request)
        target = out / f"demo-{index}.h5"
        write_feature_file(target, result.data)
        _report_embedding(result, target)
        print(f"   {time.perf_counter() - start:.2f} s in all")
        results.append(result)
    _write_overview_for(steps[0][1], results[0], out / "demo-overview.png")
    print(f"\noverview with tissue and tiles: {out / 'demo-overview.png'}")
    print("questions and answers come with the ANTONI model and the daemon (next build steps)")
    return 0


def _demo_encoders() -> tuple[Path, Path]:
    from antoni_bridge.encoders.demo import write_demo_slide_encoder, write_demo_tile_encoder

    folder = paths.demo_dir() / "weights"
    tile, slide = folder / "tile-encoder", folder / "slide-encoder"
    if not (tile / "config.json").is_file():
        write_demo_tile_encoder(tile)
    if not (slide / "config.json").is_file():
        write_demo_slide_encoder(slide)
    return tile, slide


def _device(requested: str | None) -> str:
    """The device asked for, checked; by default CUDA when there is one."""
    import torch

    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise BridgeError(f"--device {requested} was asked for but torch sees no CUDA GPU.", "use --device cpu")
    if not requested.startswith(("cpu", "cuda")):
        raise BridgeError(f"Unknown device {requested!r}.", "use cpu or cuda (cuda:N for the N-th GPU)")
    return requested


class _ProgressBars:
    """One tqdm bar per stage, showing done/total and the stage's rate."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None
        self.stage = ""

    def update(self, progress) -> None:  # progress: pipeline.Progress
        if progress.total <= 1:  # one-step stages finish too fast for a bar
            return
        if progress.stage != self.stage:
            self._close()
            self.stage = progress.stage
            unit = "tile" if progress.stage == "tile-embedding" else "step"
            self.bar = tqdm(total=progress.total, desc=progress.stage, unit=unit, leave=False, file=sys.stderr)
        if self.bar is not None:
            self.bar.total = progress.total
            self.bar.n = progress.done
            self.bar.refresh()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> _ProgressBars:
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()


if __name__ == "__main__":
    sys.exit(main())
