"""Which models a command runs on, from its options: the device, the ANTONI weights, the encoders, and the
engine's model choice and settings (`serve`, and every `--local` run, which calls the engine in-process).
Shared by every command that loads a model, so each names and finds models alike."""

from __future__ import annotations

import argparse
from pathlib import Path

from antoni_bridge.errors import BridgeError

ANTONI_ID = "SaltySander/ANTONI-Alpha"
QUANTS = ("auto", "4bit", "bf16", "none")


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


def model_choice(args: argparse.Namespace):  # -> engine.ModelChoice
    """Encoders, weights and LLM as the options name them (the demo set with --demo)."""
    from antoni_bridge.engine import ModelChoice

    tile, slide = encoder_sources(args)
    weights = weights_folder(args) if args.demo else args.weights
    return ModelChoice(tile, slide, weights, args.revision, args.llm, device(args.device), args.quant, args.demo)


def engine_settings(args: argparse.Namespace):  # -> engine.EngineSettings
    """--precision, --batch-size and --threads, checked."""
    from antoni_bridge.engine import EngineSettings

    settings = EngineSettings(args.precision, args.batch_size, args.threads)
    settings.check()
    return settings


def encoder_sources(args: argparse.Namespace) -> tuple[str, str]:
    """The tile and slide encoders the options name (the demo pair with --demo)."""
    if args.demo:
        from antoni_bridge.demo_assets import demo_weights

        demo = demo_weights()
        return str(demo.tile_encoder), str(demo.slide_encoder)
    return args.tile_encoder, args.slide_encoder


def model_options(command: argparse.ArgumentParser, note: str = "") -> None:
    """The options choosing ANTONI-Alpha's weights and how they load: one definition for every command
    (`note` says when they apply, e.g. "with --local: ")."""
    command.add_argument("--weights", default=ANTONI_ID, help=f"{note}folder or hub id (default {ANTONI_ID})")
    command.add_argument("--revision", help=f"{note}hub revision of the weights (e.g. pretrain)")
    command.add_argument("--llm", help=f"{note}folder or hub id of MedGemma (default: as the weights' config says)")
    command.add_argument("--quant", choices=QUANTS, default="auto", help=f"{note}the language model's (default auto)")


def encoder_options(command: argparse.ArgumentParser) -> None:
    """The options naming the tile and slide encoders and how they run."""
    from antoni_bridge.encoders import PRISM_ID, VIRCHOW_ID
    from antoni_bridge.engine.settings import PRECISIONS

    command.add_argument("--tile-encoder", default=VIRCHOW_ID, help=f"folder or hub id (default {VIRCHOW_ID})")
    command.add_argument("--slide-encoder", default=PRISM_ID, help=f"folder or hub id (default {PRISM_ID})")
    command.add_argument("--demo", action="store_true", help="use the embedded demo weights (made on first use)")
    command.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    command.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="arithmetic on CUDA: encoders' autocast; fp32 or bf16 also sets the LLM's with --quant auto",
    )
    command.add_argument("--batch-size", type=int, default=None, help="tiles per encoder batch (default 64)")
    command.add_argument("--threads", type=int, default=None, help="tile decoding and torch CPU threads")
    command.add_argument("--cache-dir", type=Path, default=None, help="feature cache (default in ~/.cache)")


def load_encoders(args: argparse.Namespace, on: str):  # -> Encoders
    from antoni_bridge.encoders.pipeline import Encoders

    tile, slide = encoder_sources(args)
    return Encoders.load(tile, slide, device=on, precision=engine_settings(args).encoder_precision())


def load_model(args: argparse.Namespace, weights: Path):  # -> AntoniModel
    """ANTONI-Alpha for `eval` and training (answering loads it through the engine)."""
    from transformers.utils import logging as hf_logging

    from antoni_bridge.model.antoni import AntoniModel

    if not args.verbose:
        hf_logging.disable_progress_bar()
    return AntoniModel.load(weights, args.llm, device=device(args.device), quant=args.quant)
