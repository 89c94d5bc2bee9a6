"""`make-demo-slide` and `make-demo-weights`: the offline demo's assets, written where the user says."""

from __future__ import annotations

import argparse
from pathlib import Path

from antoni_bridge.errors import BridgeError


def add_commands(commands: argparse._SubParsersAction) -> None:
    demo_slide = commands.add_parser("make-demo-slide", help="write the demo slide (pyramidal JPEG SVS)")
    demo_slide.add_argument("out", type=Path)
    demo_slide.add_argument("--width", type=int, default=20_000)
    demo_slide.add_argument("--height", type=int, default=15_000)
    demo_slide.add_argument("--mpp", type=float, default=0.25)
    demo_slide.set_defaults(run=make_demo_slide)

    demo_weights = commands.add_parser("make-demo-weights", help="write tiny random-weight demo models")
    demo_weights.add_argument("out", type=Path)
    demo_weights.set_defaults(run=make_demo_weights)


def make_demo_slide(args: argparse.Namespace) -> int:
    from antoni_bridge.slides.demo import write_demo_slide

    if args.width < 1000 or args.height < 1000 or args.mpp <= 0:
        raise BridgeError(
            "The demo slide needs at least 1000 x 1000 pixels and a positive mpp.",
            "e.g. --width 20000 --height 15000 --mpp 0.25",
        )
    write_demo_slide(args.out, args.width, args.height, args.mpp)
    print(f"wrote {args.out} ({args.width} x {args.height} px at {args.mpp} um/px)")
    return 0


def make_demo_weights(args: argparse.Namespace) -> int:
    from antoni_bridge.demo_assets import write_demo_weights

    weights = write_demo_weights(args.out)
    print(f"wrote demo weights (random) to {args.out}:")
    for name, folder in vars(weights).items():
        print(f"  {name:14} {folder}")
    return 0
