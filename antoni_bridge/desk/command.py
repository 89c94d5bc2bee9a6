"""The `antoni-bridge desk` command. Importable without PyQt6, so every other command works without it."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from antoni_bridge.errors import BridgeError


def add_commands(commands: argparse._SubParsersAction) -> None:
    desk = commands.add_parser("desk", help="the desk app: a slide viewer with a chat panel (needs the desk extra)")
    desk.add_argument("slide", nargs="?", type=Path, help="the slide to open (one can be opened later)")
    desk.add_argument("--geojson", type=Path, help="QuPath GeoJSON annotations of SLIDE, to pick regions from")
    desk.add_argument("--slide-mpp", type=float, help="microns per pixel of the slide, when its file has none")
    desk.add_argument("--start-daemon", action="store_true", help="start a local daemon when none is running")
    desk.add_argument("--demo", action="store_true", help="a daemon the desk starts uses the demo weights")
    desk.set_defaults(run=_desk)


def _desk(args: argparse.Namespace) -> int:
    if args.geojson is not None and args.slide is None:
        raise BridgeError("--geojson holds annotations of a slide, but no slide was given.", "desk SLIDE --geojson F")
    if args.slide_mpp is not None and not (math.isfinite(args.slide_mpp) and args.slide_mpp > 0):
        raise BridgeError("--slide-mpp must be a positive number.", "0.25 for a 40x scan, 0.5 for a 20x scan")
    try:
        from antoni_bridge.desk.app import run
    except ImportError as exc:
        raise BridgeError(
            f"The desk app needs PyQt6, which cannot be imported ({exc}).",
            "install the desk extra: pip install 'antoni-bridge[desk]'",
        ) from exc
    serve_args = ("--demo",) if args.demo else ()
    return run(args.slide, args.geojson, args.slide_mpp, args.start_daemon, serve_args)
