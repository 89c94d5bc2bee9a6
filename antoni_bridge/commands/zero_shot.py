"""`zero-shot`: Prism's zero-shot label probabilities for a slide, a region or a features file, through the
daemon or (`--local`) the engine in this process; `--map` also scores every tile group and writes the
map as QuPath tile objects. The results are Prism's (its contrastive heads), not ANTONI's, and say so.
The helpers for Prism's commands (source, engine, local-only options) live here; `report` uses them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from antoni_bridge.commands.common import ProgressBars, region_options, run_job, slide_request
from antoni_bridge.errors import BridgeError
from antoni_bridge.model_sources import encoder_options, model_options

LOCAL_ONLY = ("quant", "weights", "revision", "llm", "device", "precision", "batch_size", "threads", "cache_dir",
              "tile_encoder", "slide_encoder", "demo")  # fmt: skip
PRISM_NOTE = "Prism's own heads (a different model from ANTONI)"
DEMO_PRISM_NOTE = "[demo weights: Prism's text heads are random, their output means nothing]"
MAP_CLASS = "Prism zero-shot"


def add_commands(commands: argparse._SubParsersAction) -> None:
    zero_shot = commands.add_parser(
        "zero-shot",
        help="Prism's zero-shot label probabilities for a slide, a region or a features file",
        usage='%(prog)s [SLIDE] (--labels "a,b,c" | --prompts FILE) [options]',
        description="Prism's contrastive heads score labels against the slide (not ANTONI).",
    )
    zero_shot.add_argument("slide", nargs="?", type=Path, help="the slide (or give --features)")
    labels = zero_shot.add_mutually_exclusive_group(required=True)
    labels.add_argument("--labels", help='comma-separated labels, e.g. "adenocarcinoma,squamous cell carcinoma"')
    labels.add_argument("--prompts", type=Path, help='a JSON file {"label": ["phrasing", ...], ...}')
    zero_shot.add_argument("--map", type=Path, metavar="OUT.geojson", help="also per tile group, as QuPath tiles")
    zero_shot.add_argument("--groups", type=int, default=64, help="tile groups of --map (2 to 1024, default 64)")
    zero_shot.add_argument("--json", action="store_true", help="print one JSON object")
    add_source_options(zero_shot)
    zero_shot.set_defaults(run=run, local_defaults={name: zero_shot.get_default(name) for name in LOCAL_ONLY})


def add_source_options(command: argparse.ArgumentParser) -> None:
    """--features, --local and the model, encoder and region options of Prism's commands."""
    command.add_argument("--features", type=Path, help="a features file (.h5 or .pt) instead of a slide")
    command.add_argument("--local", action="store_true", help="run the models in this process instead of the daemon")
    model_options(command, "with --local: ")
    region_options(command)
    encoder_options(command)


def run(args: argparse.Namespace) -> int:
    check_local_only(args)
    sets = _prompt_sets(args)
    if args.map is not None and not 2 <= args.groups <= 1024:
        raise BridgeError("--groups must be from 2 to 1024.", "leave it out for 64")
    content = {**job_content(args), **sets}
    if args.map is not None:
        content |= {"map": True, "groups": args.groups}
    done = _local(args, content) if args.local else run_job("zero_shot", content)
    if args.map is not None:
        _write_map(done, args.map)
    _print(args, done)
    return 0


def _prompt_sets(args: argparse.Namespace) -> dict[str, Any]:
    if args.labels is not None:
        return {"labels": [label.strip() for label in args.labels.split(",")]}
    try:
        prompts = json.loads(args.prompts.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BridgeError(f"Cannot read the prompts file {args.prompts} ({exc}).", "give a JSON file") from None
    valid = isinstance(prompts, dict) and all(
        isinstance(v, list) and all(isinstance(p, str) for p in v) for v in prompts.values()
    )
    if not valid:
        raise BridgeError(
            f"{args.prompts} must hold one JSON object of labels and their phrasings.",
            '{"tumour": ["invasive carcinoma", "tumour tissue"], "normal": ["benign tissue"]}',
        )
    return {"prompts": prompts}


def check_local_only(args: argparse.Namespace) -> None:
    """Options for models in this process mean nothing to the daemon: refused rather than ignored."""
    given = [name for name in LOCAL_ONLY if getattr(args, name) != args.local_defaults[name]]
    if given and not args.local:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise BridgeError(
            f"{flags}: for models run in this process, but without --local the daemon uses the models it loaded.",
            "add --local, or leave them out (give them to `antoni-bridge serve` to change the daemon's models)",
        )


def job_content(args: argparse.Namespace) -> dict[str, Any]:
    """What names the latents, as the protocol spells it: the slide (and region), or the features file."""
    if (args.slide is None) == (args.features is None):
        raise BridgeError(
            "Give a slide, or --features and no slide.", "e.g. antoni-bridge zero-shot SLIDE --labels a,b"
        )
    if args.features is not None:
        return {"features": str(args.features.resolve())}
    request = slide_request(args, args.slide)
    content: dict[str, Any] = {"slide": str(request.path.resolve())}
    if request.region is not None:
        content["region"] = request.region.to_geojson()
    if request.slide_mpp is not None:
        content["slide_mpp"] = request.slide_mpp
    return content


def local_engine(args: argparse.Namespace):  # -> engine.Engine
    from antoni_bridge.engine import Engine
    from antoni_bridge.model_sources import engine_settings, model_choice

    return Engine(model_choice(args), args.cache_dir, (), engine_settings(args))


def _local(args: argparse.Namespace, content: dict[str, Any]) -> dict[str, Any]:
    """The engine in this process; the same fields as the daemon's `done`."""
    from dataclasses import asdict

    from antoni_bridge.engine import source_from

    groups = content.get("groups") if content.get("map") else None
    with ProgressBars() as bars:
        result = local_engine(args).zero_shot(
            source_from(content),
            content.get("labels"),
            content.get("prompts"),
            map_groups=groups,
            on_progress=bars.update,
        )
    return {**asdict(result), "model": "prism"}


def _write_map(done: dict[str, Any], path: Path) -> None:
    """Every tile as a QuPath tile object: its group's probability of each label as measurements, classed
    by its group's likeliest label (File > Import objects reads it)."""
    from antoni_bridge.files import write_atomically

    grid, labels = done["map"], done["labels"]
    size, features = grid["tile_size"], []
    for (x, y), group in zip(grid["coords"], grid["group_of"], strict=True):
        row = grid["probabilities"][group]
        ring = [[x, y], [x + size, y], [x + size, y + size], [x, y + size], [x, y]]
        measurements = {f"{MAP_CLASS}: {label}": p for label, p in zip(labels, row, strict=True)}
        properties = {
            "objectType": "tile",
            "classification": {"name": labels[max(range(len(row)), key=row.__getitem__)]},
            "measurements": {**measurements, f"{MAP_CLASS} group": group},
        }
        features.append(
            {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": properties}
        )
    write_atomically(path, json.dumps({"type": "FeatureCollection", "features": features}) + "\n")


def _print(args: argparse.Namespace, done: dict[str, Any]) -> None:
    demo = done["provenance"]["demo"]
    if args.json:
        print(json.dumps({**done, "demo_weights": demo, "front_end": "cli"}, ensure_ascii=False))
        return
    print(f"Zero-shot labels from {PRISM_NOTE}:")
    width = max(map(len, done["labels"]))
    for label, probability in sorted(zip(done["labels"], done["probabilities"], strict=True), key=lambda r: -r[1]):
        print(f"  {label:<{width}}  {probability:6.3f}  {'#' * round(probability * 40)}")
    if done["map"] is not None:
        print(f"map: {done['map']['groups']} tile groups of {done['map']['tiles']} tiles -> {args.map}")
    print(f"[{done['timings']['total_s']:.1f} s]" + (f" {DEMO_PRISM_NOTE}" if demo else ""))
