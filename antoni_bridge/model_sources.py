"""Which models a command runs on, from its options: the device, the ANTONI weights, and the full set the
daemon's runtime loads (`serve`, and `batch --local`, which runs the daemon's runtime in-process)."""

from __future__ import annotations

import argparse
from pathlib import Path

from antoni_bridge.errors import BridgeError


def device(requested: str | None) -> str:
    """The device asked for, checked; by default CUDA when there is one."""
    import torch

    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise BridgeError(f"--device {requested} was asked for but torch sees no CUDA GPU.", "use --device cpu")
    if not requested.startswith(("cpu", "cuda")):
        raise BridgeError(f"Unknown device {requested!r}.", "use cpu or cuda (cuda:N for the N-th GPU)")
    return requested


def weights_folder(args: argparse.Namespace) -> Path:
    if args.demo:
        from antoni_bridge.demo_assets import demo_weights

        return demo_weights().antoni
    from antoni_bridge.encoders.sources import resolve_model_dir

    return resolve_model_dir(args.weights, "ANTONI-Alpha weights", args.revision)


def model_sources(args: argparse.Namespace):  # -> daemon.runtime.ModelSources
    """Encoders, weights and LLM as the options name them (the demo set with --demo)."""
    from antoni_bridge.daemon.runtime import ModelSources

    weights = weights_folder(args)
    if args.demo:
        from antoni_bridge.demo_assets import demo_weights

        demo = demo_weights()
        tile, slide_encoder = str(demo.tile_encoder), str(demo.slide_encoder)
    else:
        tile, slide_encoder = args.tile_encoder, args.slide_encoder
    return ModelSources(tile, slide_encoder, weights, args.llm, device(args.device), args.quant, args.demo)
