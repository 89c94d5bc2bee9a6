"""`make-demo-slide` and `make-demo-weights`: the offline demo's assets, written where the user says."""

from __future__ import annotations

import argparse
from pathlib import Path

from antoni_bridge.errors import BridgeError


def add_commands(commands: argparse._SubParsersAction) -> None:
    demo_slide = commands.add_parser("make-demo-slide", help="write the demo slide (pyramidal JPEG SVS)")
    demo_slide.add_argument("out", type=Path)
    demo_slide.add_argument("--width", type=int, default=10_000)
    demo_slide.add_argument("--height", type=int, default=7_500)
    demo_slide.add_argument("--mpp", type=float, default=0.5)
    demo_slide.add_argument("--seed", type=int, default=17, help="layout of the pieces (17: the demo slide's)")
    demo_slide.set_defaults(run=make_demo_slide)

    demo_weights = commands.add_parser("make-demo-weights", help="train the demo weights on the demo task (CPU)")
    demo_weights.add_argument("out", type=Path)
    demo_weights.add_argument("--untrained", action="store_true", help="write the random weights training starts from")
    demo_weights.add_argument("--seed", type=int, default=0, help="seed of the slides, models and training")
    demo_weights.add_argument("--work", type=Path, help="keep the slides, data and checkpoints in this folder")
    demo_weights.set_defaults(run=make_demo_weights)


def make_demo_slide(args: argparse.Namespace) -> int:
    from antoni_bridge.slides.demo import write_demo_slide

    if args.width < 1000 or args.height < 1000 or args.mpp <= 0:
        raise BridgeError(
            "The demo slide needs at least 1000 x 1000 pixels and a positive mpp.",
            "e.g. --width 10000 --height 7500 --mpp 0.5",
        )
    write_demo_slide(args.out, args.width, args.height, args.mpp, seed=args.seed)
    print(f"wrote {args.out} ({args.width} x {args.height} px at {args.mpp} um/px)")
    return 0


def make_demo_weights(args: argparse.Namespace) -> int:
    from antoni_bridge.train.demo_weights import make_and_report

    return make_and_report(args.out, args.seed, args.untrained, args.work)
