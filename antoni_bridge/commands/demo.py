"""`demo`: the main job on the demo slide with the demo weights, offline."""

from __future__ import annotations

import argparse

from antoni_bridge.commands.common import ProgressBars


def add_commands(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser("demo", help="the main job on the demo slide with the demo weights (offline)")
    demo.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """The main job, offline: demo slide + demo weights -> a daemon -> whole slide, region, follow-up."""
    from transformers.utils import logging as hf_logging

    from antoni_bridge.demo import run_demo

    if not args.verbose:
        hf_logging.disable_progress_bar()
    with ProgressBars() as bars:
        run_demo(bars.update, bars.close)
    return 0
