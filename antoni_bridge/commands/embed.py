"""`embed`: tile features and slide latents of a slide or region, written as a feature file."""

from __future__ import annotations

import argparse
from pathlib import Path

from antoni_bridge.commands.common import ProgressBars, check_outputs, output_options, region_options, slide_request
from antoni_bridge.model_sources import encoder_options


def add_commands(commands: argparse._SubParsersAction) -> None:
    embed = commands.add_parser("embed", help="tile features and slide latents of a slide or region")
    embed.add_argument("slide", type=Path)
    output_options(embed)
    region_options(embed)
    encoder_options(embed)
    embed.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from antoni_bridge.features.h5 import write_feature_file

    request = slide_request(args, args.slide)
    check_outputs(args, args.slide, args.geojson)
    result = _embed_request(args, request)
    write_feature_file(args.out, result.data)
    print(_embedding_line(result) + f" -> {args.out}")
    if args.overview:
        _write_overview_for(request, result, args.overview)
    return 0


def _embed_request(args: argparse.Namespace, request):  # -> EmbedResult
    from antoni_bridge import paths
    from antoni_bridge.model_sources import device, engine_settings, load_encoders
    from antoni_bridge.slides.planning import plan

    settings = engine_settings(args)
    planned = plan(request)  # a bad slide or region fails before torch or any model loads
    from antoni_bridge.encoders.pipeline import embed_planned
    from antoni_bridge.features.cache import FeatureCache

    try:
        encoders = load_encoders(args, device(args.device))
    except BaseException:
        planned.slide.close()
        raise
    cache = FeatureCache(args.cache_dir or paths.feature_cache_dir())
    with ProgressBars() as bars:
        return embed_planned(planned, request, encoders, cache, bars.update, settings.embed_settings())


def _embedding_line(result) -> str:  # result: EmbedResult
    data = result.data
    timings = ", ".join(f"{k.removesuffix('_s')} {v:.2f} s" for k, v in result.timings.items())
    if result.cache_hit:
        source = "from the cache"
    elif result.resumed_tiles:
        source = f"resumed after {result.resumed_tiles:,} tiles"
    else:
        source = "computed"
    demo = " [demo encoders: random weights]" if "demo" in str(data.attrs.get("slide_encoder")) else ""
    return (
        f"{len(data.coords):,} tiles -> features {tuple(data.features.shape)}, latents {tuple(data.latents.shape)} "
        f"({source}; {timings}){demo}"
    )


def _write_overview_for(request, result, out: Path) -> None:
    """The overview of an embedding, from the tissue and grid it used (nothing is detected again)."""
    from antoni_bridge.slides.overview import write_overview
    from antoni_bridge.slides.reader import Slide

    with Slide(request.path, mpp=request.slide_mpp) as slide:
        write_overview(slide, result.tissue, result.grid, out)
