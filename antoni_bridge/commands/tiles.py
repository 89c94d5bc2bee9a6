"""`tiles`: find tissue and write the tile grid of a slide or region (no model needed)."""

from __future__ import annotations

import argparse
from pathlib import Path

from antoni_bridge.commands.common import check_outputs, output_options, region_options, slide_request


def add_commands(commands: argparse._SubParsersAction) -> None:
    tiles = commands.add_parser("tiles", help="find tissue and write the tile grid (no model needed)")
    tiles.add_argument("slide", type=Path)
    output_options(tiles)
    region_options(tiles)
    tiles.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from antoni_bridge.features.h5 import write_feature_file
    from antoni_bridge.slides.overview import write_overview
    from antoni_bridge.slides.planning import feature_file, plan

    request = slide_request(args, args.slide)
    check_outputs(args, args.slide, args.geojson)
    planned = plan(request)
    with planned.slide as slide:
        write_feature_file(args.out, feature_file(slide, planned.grid, request))
        if args.overview:
            write_overview(slide, planned.tissue, planned.grid, args.overview)
        grid = planned.grid
        print(
            f"{len(grid):,} tiles of {grid.spec.size} px at {grid.spec.mpp} um/px over "
            f"{_pieces(grid)} tissue pieces{' of the region' if grid.region else ''}, read from level {grid.level} "
            f"({grid.read_size} px each), in {planned.seconds:.2f} s -> {args.out}"
        )
    return 0


def _pieces(grid) -> int:  # grid: TileGrid
    """The tissue pieces the tiles lie on: with a region, only the region's."""
    import numpy as np

    return len(np.unique(grid.contour_index[grid.contour_index >= 0]))
