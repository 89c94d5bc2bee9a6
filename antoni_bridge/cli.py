"""The `antoni-bridge` command: one entry point, one subcommand per job.

Every failure a user can cause ends in one line saying what went wrong, one line saying what to do,
and exit status 2; no traceback (unless --verbose).
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import math
import re
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from antoni_bridge import __version__, paths, qupath_install
from antoni_bridge.batch import command as batch
from antoni_bridge.demo_assets import DEMO_NOTE
from antoni_bridge.desk import command as desk
from antoni_bridge.errors import BridgeError
from antoni_bridge.model_sources import ANTONI_ID, encoder_options, load_encoders, load_model, model_sources
from antoni_bridge.model_sources import device as _device
from antoni_bridge.model_sources import weights_folder as _weights_folder
from antoni_bridge.train import command as training

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        _refuse_extras(parser, args, extras)
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
    except Exception as exc:
        if type(exc).__name__ != "OutOfMemoryError" or args.verbose:  # torch's, imported only when needed
            raise
        print("error: the GPU ran out of memory.", file=sys.stderr)
        print("hint: use --quant 4bit, fewer choices, or close other programs using the GPU", file=sys.stderr)
        return EXIT_USER_ERROR


KNOWN_WARNINGS = (  # third-party notices a user can do nothing about; any other warning is shown
    # peft: MedGemma ties embed_tokens and lm_head; ANTONI-Alpha trains separate copies of both, as published
    (r".*`ensure_weight_tying` is not set", UserWarning),
    # peft 0.21 peft_model.py:184 reads transformers' deprecated `is_gradient_checkpointing`
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning),
)


def _quiet_libraries() -> None:
    """Libraries log their own account of what they do; ours is the one a user should read. Warnings stay on
    (a deprecation must reach the user who can report it), less the known ones above."""
    for name in ("tifffile", "tiffslide", "transformers", "peft", "huggingface_hub", "bitsandbytes"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    for message, category in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


# ---------------------------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    """argparse with a "did you mean" for a mistyped command or choice."""

    def error(self, message: str):  # type: ignore[override]  # -> NoReturn
        wrong = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if wrong:
            choices = re.findall(r"'([^']*)'", wrong.group(2))
            message += _did_you_mean(wrong.group(1), choices)
        super().error(message)


def _did_you_mean(word: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(close)}?" if close else ""


def _refuse_extras(parser: argparse.ArgumentParser, args: argparse.Namespace, extras: list[str]) -> None:
    """Arguments no command takes: name the closest option of the command given, then exit 2."""
    command = parser if args.command is None else _subcommands(parser)[args.command]
    options = [o for action in command._actions for o in action.option_strings]
    first = extras[0]
    if first.startswith("-"):
        hint = _did_you_mean(first.split("=")[0], options)
        command.error(f"{first} is not an option of {command.prog}{hint}")
    command.error(f"unexpected argument {first!r}; quote a question that has spaces")


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="antoni-bridge", description="ANTONI-Alpha on whole slides, locally.")
    parser.add_argument("--verbose", action="store_true", help="show tracebacks of errors")
    parser.add_argument("--version", action="version", version=f"antoni-bridge {__version__}")
    commands = parser.add_subparsers(title="commands", dest="command")

    demo_slide = commands.add_parser("make-demo-slide", help="write the demo slide (pyramidal JPEG SVS)")
    demo_slide.add_argument("out", type=Path)
    demo_slide.add_argument("--width", type=int, default=10_000)
    demo_slide.add_argument("--height", type=int, default=7_500)
    demo_slide.add_argument("--mpp", type=float, default=0.5)
    demo_slide.add_argument("--seed", type=int, default=17, help="layout of the pieces (17: the demo slide's)")
    demo_slide.set_defaults(run=_make_demo_slide)

    demo_weights = commands.add_parser("make-demo-weights", help="train the demo weights on the demo task (CPU)")
    demo_weights.add_argument("out", type=Path)
    demo_weights.add_argument("--untrained", action="store_true", help="write the random weights training starts from")
    demo_weights.add_argument("--seed", type=int, default=0, help="seed of the slides, models and training")
    demo_weights.add_argument("--work", type=Path, help="keep the slides, data and checkpoints in this folder")
    demo_weights.set_defaults(run=_make_demo_weights)

    tiles = commands.add_parser("tiles", help="find tissue and write the tile grid (no model needed)")
    tiles.add_argument("slide", type=Path)
    _output_options(tiles)
    _region_options(tiles)
    tiles.set_defaults(run=_tiles)

    embed = commands.add_parser("embed", help="tile features and slide latents of a slide or region")
    embed.add_argument("slide", type=Path)
    _output_options(embed)
    _region_options(embed)
    encoder_options(embed)
    embed.set_defaults(run=_embed)

    ask = commands.add_parser(
        "ask",
        help="ask ANTONI-Alpha about a slide, a region or a features file",
        usage='%(prog)s [SLIDE] "QUESTION" [options]',
        description="One question per run (quote it); --follow-up continues the last conversation.",
    )
    ask.add_argument(
        "words", nargs="+", metavar="SLIDE QUESTION", help="a slide and one question, or only the question (--features)"
    )
    ask.add_argument("--features", type=Path, help="a features file (.h5 or .pt) instead of a slide")
    ask.add_argument("--local", action="store_true", help="run the model in this process instead of the daemon")
    ask.add_argument("--weights", default=ANTONI_ID, help=f"folder or hub id (default {ANTONI_ID})")
    ask.add_argument("--revision", help="hub revision of the weights (e.g. pretrain)")
    ask.add_argument("--llm", help="folder or hub id of MedGemma (default: as the weights' config says)")
    ask.add_argument("--quant", choices=("auto", "4bit", "bf16", "none"), help="with --local (default auto)")
    ask.add_argument("--greedy", action="store_true", help="greedy decoding (default: sampling)")
    ask.add_argument("--seed", type=int, help="seed for sampling")
    ask.add_argument("--max-new-tokens", type=int, default=1024)
    ask.add_argument("--choices", help='multiple choice instead: "A=first answer,B=second answer"')
    ask.add_argument("--json", action="store_true", help="print one JSON object (answer, token ids, timings)")
    ask.add_argument("--follow-up", action="store_true", help="continue the last conversation about this slide")
    _region_options(ask)
    encoder_options(ask)
    ask.set_defaults(run=_ask, local_defaults={name: ask.get_default(name) for name in LOCAL_ONLY})

    serve = commands.add_parser("serve", help="run the daemon that hosts the models (front ends talk to it)")
    serve.add_argument("--address", default="tcp://127.0.0.1:5555", help="where to listen (loopback by default)")
    serve.add_argument("--weights", default=ANTONI_ID)
    serve.add_argument("--revision")
    serve.add_argument("--llm")
    serve.add_argument("--quant", choices=("auto", "4bit", "bf16", "none"), default="auto")
    serve.add_argument("--queue", type=int, default=16, help="jobs that may wait before `busy`")
    serve.add_argument("--client-timeout", type=float, default=3.0, help="cancel the jobs of clients silent this long")
    serve.add_argument(
        "--slide-root", type=Path, action="append", default=[], help="read slides only under this folder (repeatable)"
    )
    serve.add_argument("--allow-remote", action="store_true", help="allow a non-loopback address (CURVE-encrypted)")
    serve.add_argument("--authorized-keys", type=Path, help="with --allow-remote: folder of client public keys")
    serve.add_argument("--log-file", type=Path, help="rotating log (default in ~/.cache/antoni-bridge/logs)")
    encoder_options(serve)
    serve.set_defaults(run=_serve)
    for name, helptext, run in (
        ("status", "the daemon's queue and GPU memory", _status),
        ("stop", "stop the daemon", _stop),
    ):
        command = commands.add_parser(name, help=helptext)
        command.set_defaults(run=run)
    cancel = commands.add_parser("cancel", help="cancel a queued or running job")
    cancel.add_argument("job")
    cancel.set_defaults(run=_cancel)

    demo = commands.add_parser("demo", help="the main job on the demo slide with the demo weights (offline)")
    demo.set_defaults(run=_demo)
    desk.add_commands(commands)
    training.add_commands(commands)
    batch.add_commands(commands)
    qupath_install.add_commands(commands)
    for command in commands.choices.values():  # --verbose after the command too
        command.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def _output_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--out", type=Path, required=True, help="HDF5 file to write")
    command.add_argument("--overview", type=Path, help="write a PNG with tissue, region and tiles drawn")


def _region_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--mpp", type=float, default=0.5, help="microns per pixel of the tiles (default 0.5)")
    command.add_argument("--size", type=int, default=224, help="tile size in pixels (default 224)")
    command.add_argument("--min-tissue", type=float, default=0.0, help="keep tiles with more tissue than this")
    where = command.add_mutually_exclusive_group()
    where.add_argument("--region", help="x,y,width,height in level-0 pixels")
    where.add_argument("--geojson", type=Path, help="QuPath GeoJSON export holding the region")
    command.add_argument("--name", help="which annotation of --geojson (name, class or id)")
    command.add_argument("--slide-mpp", type=float, help="microns per pixel of the slide, when its file has none")


# ---------------------------------------------------------------------------------------------- demo assets


def _make_demo_slide(args: argparse.Namespace) -> int:
    from antoni_bridge.slides.demo import write_demo_slide

    if args.width < 1000 or args.height < 1000 or args.mpp <= 0:
        raise BridgeError(
            "The demo slide needs at least 1000 x 1000 pixels and a positive mpp.",
            "e.g. --width 10000 --height 7500 --mpp 0.5",
        )
    write_demo_slide(args.out, args.width, args.height, args.mpp, seed=args.seed)
    print(f"wrote {args.out} ({args.width} x {args.height} px at {args.mpp} um/px)")
    return 0


def _make_demo_weights(args: argparse.Namespace) -> int:
    from antoni_bridge.train.demo_weights import make_and_report

    return make_and_report(args.out, args.seed, args.untrained, args.work)


# ---------------------------------------------------------------------------------------------- slides


def _request(args: argparse.Namespace, slide: Path):  # -> SlideRequest (imported lazily: --help stays fast)
    from antoni_bridge.slides.grid import GridSpec
    from antoni_bridge.slides.planning import SlideRequest
    from antoni_bridge.slides.reader import check_input_file
    from antoni_bridge.slides.regions import Region, read_geojson_region

    check_input_file(slide)
    if args.name and not args.geojson:
        raise BridgeError("--name picks an annotation of --geojson, but no --geojson was given.", "add --geojson FILE")
    _check_grid_numbers(args)
    region = None
    if args.region:
        region = Region.parse_rectangle(args.region)
    elif args.geojson:
        region = read_geojson_region(args.geojson, args.name)
    spec = GridSpec(mpp=args.mpp, size=args.size, min_tissue=args.min_tissue)
    return SlideRequest(path=slide, region=region, spec=spec, slide_mpp=args.slide_mpp)


MIN_TILE, MAX_TILE = 16, 4096  # pixels per tile side


def _check_grid_numbers(args: argparse.Namespace) -> None:
    """Each bad number is named with the range it must lie in."""
    trained = "the defaults (--mpp 0.5 --size 224 --min-tissue 0) are what ANTONI-Alpha was trained on"
    if not (math.isfinite(args.mpp) and args.mpp > 0):
        raise BridgeError(f"--mpp {args.mpp} is not a positive number of microns per pixel.", trained)
    if not MIN_TILE <= args.size <= MAX_TILE:
        raise BridgeError(f"--size {args.size} is outside {MIN_TILE}..{MAX_TILE} pixels per tile side.", trained)
    if not (math.isfinite(args.min_tissue) and 0 <= args.min_tissue < 1):
        raise BridgeError(f"--min-tissue {args.min_tissue} is outside [0, 1): it is a fraction of a tile.", trained)
    if args.slide_mpp is not None and not (math.isfinite(args.slide_mpp) and args.slide_mpp > 0):
        raise BridgeError(
            f"--slide-mpp {args.slide_mpp} is not a positive number of microns per pixel.",
            "0.25 for a 40x scan, 0.5 for a 20x scan",
        )


def _check_outputs(args: argparse.Namespace, *inputs: Path | None) -> None:
    """Outputs never replace an input (a slide, annotations) or each other, nor a file that is not ours."""
    import h5py

    outputs = [p for p in (args.out, getattr(args, "overview", None)) if p is not None]
    given = [p.resolve() for p in inputs if p is not None]
    for out in outputs:
        if out.resolve() in given:
            raise BridgeError(
                f"The output {out} is one of the inputs; it would be overwritten.", "choose another --out"
            )
    if len({p.resolve() for p in outputs}) < len(outputs):
        raise BridgeError("--out and --overview name the same file.", "give them different names")
    if args.out.is_file() and not h5py.is_hdf5(args.out):
        raise BridgeError(
            f"{args.out} exists and is not an HDF5 file; it will not be replaced.", "choose another --out"
        )


def _tiles(args: argparse.Namespace) -> int:
    from antoni_bridge.features.h5 import write_feature_file
    from antoni_bridge.slides.overview import write_overview
    from antoni_bridge.slides.planning import feature_file, plan

    request = _request(args, args.slide)
    _check_outputs(args, args.slide, args.geojson)
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


def _embed(args: argparse.Namespace) -> int:
    from antoni_bridge.features.h5 import write_feature_file

    request = _request(args, args.slide)
    _check_outputs(args, args.slide, args.geojson)
    result = _embed_request(args, request)
    write_feature_file(args.out, result.data)
    print(_embedding_line(result) + f" -> {args.out}")
    if args.overview:
        _write_overview_for(request, result, args.overview)
    return 0


def _embed_request(args: argparse.Namespace, request):  # -> EmbedResult
    from antoni_bridge.slides.planning import plan

    if args.batch_size < 1 or (args.threads is not None and args.threads < 1):
        raise BridgeError("--batch-size and --threads must be at least 1.", "leave them out for the defaults")
    planned = plan(request)  # a bad slide or region fails before torch or any model loads
    from antoni_bridge.encoders.pipeline import EmbedSettings, embed_planned
    from antoni_bridge.features.cache import FeatureCache

    try:
        device = _device(args.device)
        encoders = load_encoders(args, device)
    except BaseException:
        planned.slide.close()
        raise
    cache = FeatureCache(args.cache_dir or paths.feature_cache_dir())
    with _ProgressBars() as bars:
        settings = EmbedSettings(batch_size=args.batch_size, threads=args.threads)
        return embed_planned(planned, request, encoders, cache, bars.update, settings)


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


# ---------------------------------------------------------------------------------------------- asking


LOCAL_ONLY = ("quant", "weights", "revision", "llm", "device", "precision", "batch_size", "threads", "cache_dir",
              "tile_encoder", "slide_encoder", "demo")  # fmt: skip


def _check_local_only(args: argparse.Namespace, defaults: dict[str, Any]) -> None:
    """Options for a model in this process mean nothing to the daemon: refused rather than ignored."""
    given = [name for name in LOCAL_ONLY if getattr(args, name) != defaults[name]]
    if given and not args.local:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise BridgeError(
            f"{flags}: for a model run in this process, but without --local the daemon answers with the "
            "models it loaded.",
            "add --local, or leave them out (give them to `antoni-bridge serve` to change the daemon's models)",
        )
    if args.quant is None:
        args.quant = "auto"


def _ask(args: argparse.Namespace) -> int:
    _check_local_only(args, args.local_defaults)
    slide, question = _slide_and_question(args)
    choices = _parse_choices(args.choices) if args.choices is not None else None
    if not question.strip():
        raise BridgeError("The question is empty.", 'ask something, e.g. "What organ is this tissue from?"')
    if args.max_new_tokens < 1:
        raise BridgeError("--max-new-tokens must be at least 1.", "leave it out for the default of 1024")
    if choices and args.follow_up:
        raise BridgeError("Multiple choice scores one question; it does not follow up.", "leave out --follow-up")
    request = _request(args, slide) if slide is not None else None
    if choices:
        return (
            _ask_choices_local(args, request, question, choices)
            if args.local
            else _ask_choices(args, request, question, choices)
        )
    from antoni_bridge import conversations

    key = conversations.conversation_key(
        slide or args.features, request.region.key() if request and request.region else ""
    )
    conversation = (conversations.load(key) if args.follow_up else []) + [{"role": "user", "content": question}]
    answer = _answer_local(args, request, conversation) if args.local else _answer_daemon(args, request, conversation)
    conversations.save(key, [*conversation, {"role": "assistant", "content": answer}])
    return 0


def _local_latents(args: argparse.Namespace, request):  # request: SlideRequest | None -> (latents, weights)
    """Latents of the slide or features file, checked against the weights before MedGemma loads."""
    import torch

    from antoni_bridge.model.antoni import check_latents
    from antoni_bridge.model.config import AntoniConfig

    if request is not None:
        latents = torch.from_numpy(_embed_request(args, request).data.latents)
    else:
        from antoni_bridge.features.h5 import read_latents

        latents = torch.from_numpy(read_latents(args.features))
    weights = _weights_folder(args)
    check_latents(latents, AntoniConfig.read(weights))  # before MedGemma takes a minute to load
    return latents, weights


def _answer_local(args: argparse.Namespace, request, conversation: list[dict[str, str]]) -> str:
    from antoni_bridge.model.generation import GenerationOptions

    latents, weights = _local_latents(args, request)
    model = load_model(args, weights)
    stream = None if args.json else (lambda text: print(text, end="", flush=True))
    result = model.answer(latents, conversation, GenerationOptions(**_options(args)), on_text=stream)
    demo = bool(model.config.demo)
    if args.json:
        print(json.dumps(_answer_json(result, demo), ensure_ascii=False))
        return result.text
    print()
    print(
        f"[{len(result.token_ids)} of at most {args.max_new_tokens} tokens, first after "
        f"{result.first_token_s * 1000:.0f} ms, {result.tokens_per_s:.1f} tokens/s, stop: {result.stop_reason}]"
        + (f" {DEMO_NOTE}" if demo else "")
    )
    return result.text


def _job_content(args: argparse.Namespace, request) -> dict[str, Any]:
    """What names the latents in a daemon request: the slide (and region), or the features file."""
    if request is None:
        return {"features": str(args.features.resolve())}
    from antoni_bridge.slides.grid import GridSpec

    if request.spec != GridSpec():
        raise BridgeError(
            "The daemon tiles at the trained scale only.", "leave out --mpp, --size and --min-tissue, or add --local"
        )
    content: dict[str, Any] = {"slide": str(request.path.resolve())}
    if request.region is not None:
        content["region"] = request.region.to_geojson()
    if request.slide_mpp is not None:
        content["slide_mpp"] = request.slide_mpp
    return content


def _run_job(type_: str, content: dict[str, Any], on_token=None) -> dict[str, Any]:
    """One job through the running daemon, with progress bars; the content of its `done`."""
    from antoni_bridge.client import Client

    with Client() as client, _ProgressBars() as bars:
        for event in client.events(type_, content):
            if event.type == "progress":
                bars.update(_progress_of(event.content))
            elif event.type == "token" and on_token is not None:
                bars.close()
                on_token(event.content["text"])
            elif event.type == "done":
                return event.content
            elif event.type in ("error", "busy", "cancelled"):
                message = event.content.get("message", f"The job was {event.type}.")
                raise BridgeError(message, event.content.get("hint", ""))
    raise BridgeError("The daemon ended the job without an answer.", f"see its log ({paths.log_file()} by default)")


def _answer_daemon(args: argparse.Namespace, request, conversation: list[dict[str, str]]) -> str:
    """Through the running daemon: stream progress and tokens, end on its one terminal message."""
    content = {**_job_content(args, request), "conversation": conversation, "options": _options(args)}
    stream = None if args.json else (lambda text: print(text, end="", flush=True))
    done = _run_job("ask", content, stream)
    if args.json:
        print(json.dumps(done, ensure_ascii=False))
        return done["answer"]
    timings = done["timings"]
    print(
        f"\n[{len(done['token_ids'])} of at most {args.max_new_tokens} tokens, first after "
        f"{timings['first_token_s'] * 1000:.0f} ms, {timings.get('tokens_per_s', 0.0):.1f} tokens/s, "
        f"latents from {done['latents_from']}, {timings['total_s']:.1f} s in all]"
        + (f" {DEMO_NOTE}" if done["demo"] else "")
    )
    return done["answer"]


def _ask_choices_local(args: argparse.Namespace, request, question: str, choices) -> int:
    latents, weights = _local_latents(args, request)
    model = load_model(args, weights)
    start = time.perf_counter()
    scores = model.score_choices(latents, question, choices[1])
    return _print_choices(args, choices, scores.mean_nll, bool(model.config.demo), time.perf_counter() - start)


def _ask_choices(args: argparse.Namespace, request, question: str, choices) -> int:
    content = {**_job_content(args, request), "question": question, "choices": choices[1]}
    done = _run_job("score", content)
    return _print_choices(args, choices, done["mean_nll"], done["demo"], done["timings"]["total_s"])


def _progress_of(content: dict[str, Any]):  # -> planning.Progress
    from antoni_bridge.slides.planning import Progress

    return Progress(content["stage"], content["done"], content["total"], content.get("rate", 0.0))


def _serve(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from antoni_bridge.daemon.logs import setup_logging
    from antoni_bridge.daemon.runtime import Runtime
    from antoni_bridge.daemon.server import Daemon
    from antoni_bridge.files import keep_files_private

    if not args.verbose:
        hf_logging.disable_progress_bar()
    if args.queue < 1 or not args.client_timeout > 0:
        raise BridgeError(
            "--queue must be at least 1 and --client-timeout positive.", "leave them out for the defaults"
        )
    curve = _curve(args)
    missing = [str(root) for root in args.slide_root if not root.is_dir()]
    if missing:
        raise BridgeError(f"--slide-root {missing[0]} is not a folder.", "give folders that hold your slides")
    sources = model_sources(args)
    runtime = Runtime(sources, args.cache_dir or paths.feature_cache_dir(), args.slide_root)
    log_file = args.log_file or paths.log_file()
    keep_files_private()  # logs, caches and the key: the user's alone
    setup_logging(log_file, args.verbose)
    print(
        f"antoni-bridge daemon on {args.address} ({'demo' if args.demo else 'real'} weights"
        f"{', CURVE' if curve else ''}); log in {log_file}; stop with `antoni-bridge stop`",
        flush=True,
    )
    Daemon(args.address, runtime, paths.connection_file(), args.queue, args.client_timeout, curve).serve()
    return 0


def _curve(args: argparse.Namespace):  # -> server.Curve | None
    """CURVE keys when the daemon may be reached from other machines; refuse a remote address without."""
    import zmq

    from antoni_bridge.daemon.protocol import is_loopback
    from antoni_bridge.daemon.server import Curve

    if not args.allow_remote:
        if not is_loopback(args.address):
            raise BridgeError(
                f"{args.address} is not a loopback address.",
                "add --allow-remote to accept other machines (encrypted with CURVE), or use 127.0.0.1",
            )
        if args.authorized_keys:
            raise BridgeError("--authorized-keys needs --allow-remote.", "add --allow-remote")
        return None
    if not zmq.has("curve"):
        raise BridgeError("This pyzmq build has no CURVE support.", "install pyzmq from PyPI (it bundles libsodium)")
    if args.authorized_keys and not args.authorized_keys.is_dir():
        raise BridgeError(f"--authorized-keys {args.authorized_keys} is not a folder.", "a folder of *.key files")
    return Curve.new(args.authorized_keys)


def _status(args: argparse.Namespace) -> int:
    from antoni_bridge.client import Client

    with Client() as client:
        print(json.dumps(client.request("status").content, indent=2))
    return 0


def _stop(args: argparse.Namespace) -> int:
    from antoni_bridge.client import Client

    with Client() as client:
        client.request("shutdown")
    print("the daemon is stopping")
    return 0


def _cancel(args: argparse.Namespace) -> int:
    from antoni_bridge.client import Client

    with Client() as client:
        client.request("cancel", {"job_id": args.job})
    print(f"cancelled {args.job}")
    return 0


def _slide_and_question(args: argparse.Namespace) -> tuple[Path | None, str]:
    if args.features is not None:
        if len(args.words) != 1:
            raise BridgeError(
                "With --features give only the question (one, quoted).", 'antoni-bridge ask --features F "QUESTION"'
            )
        return None, args.words[0]
    if len(args.words) > 2:
        raise BridgeError(
            f"ask takes a slide and one question, but got {len(args.words)} words.",
            'quote the question: ask SLIDE "What organ is this?"; ask again with --follow-up for the next one',
        )
    if len(args.words) != 2:
        raise BridgeError("Give a slide and a question, or --features and a question.", 'ask SLIDE "QUESTION"')
    return Path(args.words[0]), args.words[1]


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """Generation options as the protocol spells them (GenerationOptions takes the same names)."""
    if args.greedy:
        return {"max_new_tokens": args.max_new_tokens, "greedy": True}
    return {"max_new_tokens": args.max_new_tokens, "greedy": False, "top_k": 64, "top_p": 0.95, "seed": args.seed}


def _answer_json(result, demo: bool) -> dict[str, Any]:
    return {
        "answer": result.text,
        "token_ids": result.token_ids,
        "stop_reason": result.stop_reason,
        "demo_weights": demo,
        "timings": {
            "first_token_s": result.first_token_s,
            "total_s": result.total_s,
            "tokens_per_s": result.tokens_per_s,
            "prompt_tokens": result.prompt_tokens,
        },
    }


def _print_choices(args: argparse.Namespace, choices, mean_nll: list[float], demo: bool, seconds: float) -> int:
    labels, texts = choices
    ranking = sorted(zip(labels, texts, mean_nll, strict=True), key=lambda row: row[2])
    if args.json:
        rows = [{"label": label, "choice": text, "mean_nll": nll} for label, text, nll in ranking]
        result = {"best": ranking[0][0], "ranking": rows, "demo_weights": demo, "seconds": seconds}
        print(json.dumps(result, ensure_ascii=False))
        return 0
    for label, text, nll in ranking:
        print(f"{label}  {nll:7.3f}  {text}")
    print(f"best: {ranking[0][0]} (lowest mean negative log-likelihood)" + (f" {DEMO_NOTE}" if demo else ""))
    return 0


def _parse_choices(text: str) -> tuple[list[str], list[str]]:
    labels, texts = [], []
    for part in text.split(","):
        label, sep, choice = part.partition("=")
        if not sep or not label.strip() or not choice.strip():
            raise BridgeError(f"Cannot read the choice {part.strip()!r}.", 'write --choices "A=first,B=second"')
        labels.append(label.strip())
        texts.append(choice.strip())
    if len(set(labels)) != len(labels):
        raise BridgeError("Two choices share a label.", "give every choice its own label")
    return labels, texts


# ---------------------------------------------------------------------------------------------- demo


def _demo(args: argparse.Namespace) -> int:
    """The main job, offline: demo slide + demo weights -> a daemon -> whole slide, region, follow-up."""
    from transformers.utils import logging as hf_logging

    from antoni_bridge.demo import run_demo

    if not args.verbose:
        hf_logging.disable_progress_bar()
    with _ProgressBars() as bars:
        run_demo(lambda content: bars.update(_progress_of(content)), bars.close)
    return 0


# ---------------------------------------------------------------------------------------------- helpers


class _ProgressBars:
    """One tqdm bar per multi-step stage, showing done/total and the stage's rate."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None
        self.stage = ""

    def update(self, progress) -> None:  # progress: pipeline.Progress
        if progress.total <= 1:  # one-step stages finish too fast for a bar
            return
        if progress.stage != self.stage:
            self.close()
            self.stage = progress.stage
            unit = "tile" if progress.stage == "tile-embedding" else "step"
            self.bar = tqdm(
                total=progress.total,
                initial=progress.done,
                desc=progress.stage,
                unit=unit,
                leave=False,
                file=sys.stderr,
            )
        if self.bar is not None:
            self.bar.total = progress.total
            self.bar.update(progress.done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> _ProgressBars:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    sys.exit(main())
