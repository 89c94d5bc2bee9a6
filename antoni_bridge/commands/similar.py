"""`similar`: the slides and regions embedded on this machine closest to a slide, a region or a features
file, by slide embedding; through the daemon or (`--local`) the engine in this process. Paths given
relative to the working folder are sent absolute (the daemon refuses relative ones)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from antoni_bridge.commands.common import run_job, slide_request
from antoni_bridge.demo_assets import DEMO_NOTE
from antoni_bridge.errors import BridgeError
from antoni_bridge.model_sources import ANTONI_ID, encoder_options

LOCAL_ONLY = ("tile_encoder", "slide_encoder", "demo", "device", "precision", "batch_size", "threads", "cache_dir")
TOP_RANGE = (1, 1000)


def add_commands(commands: argparse._SubParsersAction) -> None:
    similar = commands.add_parser(
        "similar",
        help="find the slides embedded here that are closest to a slide or region",
        description="Every slide or region embedded on this machine is indexed by its slide embedding; this "
        "lists the closest (cosine similarity), with a thumbnail of each.",
    )
    similar.add_argument("slide", nargs="?", type=Path, help="the slide (or give --features)")
    similar.add_argument("--features", type=Path, help="a features file (.h5 or .pt) instead of a slide")
    where = similar.add_mutually_exclusive_group()
    where.add_argument("--region", help="x,y,width,height in level-0 pixels")
    where.add_argument("--geojson", type=Path, help="QuPath GeoJSON export holding the region")
    similar.add_argument("--name", help="which annotation of --geojson (name, class or id)")
    similar.add_argument("--slide-mpp", type=float, help="microns per pixel of the slide, when its file has none")
    similar.add_argument("--top", type=int, default=10, help="how many to list (default 10, at most 1000)")
    similar.add_argument("--within", type=Path, help="only slides under this folder, or in this QuPath project")
    similar.add_argument("--json", action="store_true", help="print one JSON object")
    similar.add_argument("--local", action="store_true", help="run the encoders in this process instead of the daemon")
    encoder_options(similar)
    # the trained grid, and the model choice --local builds (only its encoders load)
    similar.set_defaults(mpp=0.5, size=224, min_tissue=0.0, weights=ANTONI_ID, revision=None, llm=None, quant="auto")
    similar.set_defaults(run=run, local_defaults={name: similar.get_default(name) for name in LOCAL_ONLY})


def run(args: argparse.Namespace) -> int:
    _check(args)
    content = {**_source_content(args), "top": args.top}
    if args.within is not None:
        content["within"] = str(args.within.expanduser().resolve())
    done = _similar_local(args, content) if args.local else run_job("similar", content)
    _print(args, done)
    return 0


def _check(args: argparse.Namespace) -> None:
    given = [name for name in LOCAL_ONLY if getattr(args, name) != args.local_defaults[name]]
    if given and not args.local:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise BridgeError(
            f"{flags}: for encoders run in this process, but without --local the daemon uses its own.",
            "add --local, or leave them out",
        )
    if (args.slide is None) == (args.features is None):
        raise BridgeError("Give a slide, or --features FILE (not both).", "antoni-bridge similar SLIDE [--top 10]")
    if args.features is not None and (args.region or args.geojson):
        raise BridgeError("A features file has no regions.", "give the slide with --region or --geojson")
    if not TOP_RANGE[0] <= args.top <= TOP_RANGE[1]:
        raise BridgeError(f"--top {args.top} is outside {TOP_RANGE[0]}..{TOP_RANGE[1]}.", "leave it out for 10")


def _source_content(args: argparse.Namespace) -> dict[str, Any]:
    """The source as the protocol names it, paths absolute."""
    if args.features is not None:
        return {"features": str(args.features.expanduser().resolve())}
    request = slide_request(args, args.slide)
    content: dict[str, Any] = {"slide": str(request.path.expanduser().resolve())}
    if request.region is not None:
        content["region"] = request.region.to_geojson()
    if request.slide_mpp is not None:
        content["slide_mpp"] = request.slide_mpp
    return content


def _similar_local(args: argparse.Namespace, content: dict[str, Any]) -> dict[str, Any]:
    """The engine in this process (its encoders only); the same fields as the daemon's `done`."""
    from dataclasses import asdict

    from antoni_bridge.commands.common import ProgressBars
    from antoni_bridge.engine import Engine, source_from
    from antoni_bridge.model_sources import engine_settings, model_choice

    engine = Engine(model_choice(args), args.cache_dir, (), engine_settings(args))
    with ProgressBars() as bars:
        found = engine.similar(source_from(content), content["top"], content.get("within"), on_progress=bars.update)
    return {**asdict(found), "demo": engine.choice.demo}


def _print(args: argparse.Namespace, done: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps({"results": done["results"], "indexed": done["indexed"]}, ensure_ascii=False))
        return
    for result in done["results"]:
        where = f"  region {_box(result['region'])}" if result["region"] else ""
        thumbnail = f"  [{result['thumbnail']}]" if result["thumbnail"] else ""
        print(f"{result['similarity']:.4f}  {result['slide']}{where}{thumbnail}")
    found = len(done["results"])
    note = f" {DEMO_NOTE}" if done.get("demo") else ""
    print(f"[{found} of {done['indexed']:,} indexed slides and regions; cosine similarity of slide embeddings]{note}")


def _box(region: dict[str, Any]) -> str:
    """x,y,width,height of a region's bounding box, as --region takes it."""
    from antoni_bridge.slides.regions import Region

    x0, y0, x1, y1 = Region.from_geojson_dict(region).bounds
    return f"{x0:.0f},{y0:.0f},{x1 - x0:.0f},{y1 - y0:.0f}"
