"""`cohort embed` and `cohort ask`: whole cohorts on Ray (a local Ray, or a cluster with --ray-address).

Ray is the optional `cohort` extra; without it these commands say how to install it and nothing else
changes. docs/cohort.md says how to run on a workstation and on a cluster.
"""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta
from pathlib import Path

from antoni_bridge.model_sources import encoder_options, model_options

SOURCE_HELP = "a folder of slides, a CSV/Parquet manifest (path, region, case) or a QuPath project (.qpproj)"


def add_commands(commands: argparse._SubParsersAction) -> None:
    cohort = commands.add_parser("cohort", help="embed or ask about whole cohorts on Ray (the cohort extra)")
    actions = cohort.add_subparsers(title="cohort commands", dest="cohort_command", required=True)
    embed = actions.add_parser("embed", help="a feature file per slide and a Parquet manifest")
    embed.add_argument("source", type=Path, help=SOURCE_HELP)
    embed.add_argument("--out", type=Path, required=True, help="folder for NAME.h5 per slide and manifest.parquet")
    embed.add_argument("--mpp", type=float, default=0.5, help="microns per pixel of the tiles (default 0.5)")
    embed.add_argument("--size", type=int, default=224, help="tile size in pixels (default 224)")
    embed.add_argument("--min-tissue", type=float, default=0.0, help="keep tiles with more tissue than this")
    embed.add_argument("--slide-mpp", type=float, help="microns per pixel of slides whose files record none")
    embed.add_argument("--block-tiles", type=int, default=512, help="tiles per read block (default 512)")
    encoder_options(embed)
    ray_options(embed)
    embed.set_defaults(run=run_embed)
    ask = actions.add_parser("ask", help="answers for every slide and annotation, with provenance")
    ask.add_argument("source", type=Path, help=SOURCE_HELP + ", or the output folder of `cohort embed`")
    ask.add_argument("--questions", type=Path, required=True, help="a file of questions, one per line")
    ask.add_argument("--out", type=Path, default=Path("answers.parquet"), help="Parquet, or CSV when it ends in .csv")
    ask.add_argument("--max-new-tokens", type=int, help="answer length limit (default 1024)")
    ask.add_argument(
        "--evidence", action="store_true", help="an evidence map per answer (QuPath GeoJSON), beside --out"
    )
    ask.add_argument(
        "--zero-shot", metavar="LABELS", help='Prism zero-shot probabilities per slide, e.g. "tumour,normal"'
    )
    model_options(ask)
    encoder_options(ask)
    ray_options(ask)
    ask.set_defaults(run=run_ask)


def ray_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--ray-address", help="join a Ray cluster (auto, or ray://HOST:10001); default: a local Ray")
    command.add_argument("--cpus", type=int, help="a local Ray's CPUs (default: every core)")
    command.add_argument("--workers", type=int, help="model workers (default: one per GPU share, one on the CPU)")
    command.add_argument("--gpus-per-worker", type=float, default=1.0, help="GPUs per model worker (default 1)")


def run_embed(args: argparse.Namespace) -> int:
    from antoni_bridge.cohort.embedding import embed_cohort
    from antoni_bridge.cohort.progress import CohortProgress
    from antoni_bridge.cohort.runtime import import_ray
    from antoni_bridge.cohort.sources import read_cohort

    import_ray()  # before anything else: without the extra, the one thing to say
    if args.cache_dir is not None:  # an option shared with `embed`; here the files in --out are the cache
        from antoni_bridge.errors import BridgeError

        hint = "leave --cache-dir out: a rerun skips the slides whose files in --out are finished"
        raise BridgeError("cohort embed keeps no feature cache: it writes each slide's file into --out.", hint)
    settings = _embed_settings(args)
    slides = read_cohort(args.source)
    with _ray(args) as ray:
        settings = _on_device(ray, args, settings)
        summary = embed_cohort(ray, slides, args.out, settings, args.workers, CohortProgress(len(slides)))
    print(summary_text(summary, args.out))
    return 1 if summary.failed else 0


def run_ask(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from antoni_bridge.batch.sources import read_questions
    from antoni_bridge.cohort.asking import ask_cohort, ask_items, write_answers
    from antoni_bridge.cohort.runtime import import_ray
    from antoni_bridge.engine import options_from
    from antoni_bridge.model_sources import engine_settings

    import_ray()
    questions = read_questions([], args.questions)
    options = options_from({"max_new_tokens": args.max_new_tokens})
    options.check()
    _check_answers_file(args.out)
    extras = _extras(args)
    items = ask_items(args.source)
    with _ray(args) as ray, tqdm(total=len(items), desc="slides", unit="slide", file=sys.stderr) as bar:
        choice, resources, workers = _model_workers(ray, args)
        worker_args = (choice, args.cache_dir, engine_settings(args))
        summary = ask_cohort(ray, items, questions, worker_args, options, extras, workers, resources, progress=bar)
    write_answers(args.out, summary.rows)
    answered = len(summary.rows) - summary.failed
    print(
        f"{summary.slides} slides: {answered} answers, {summary.failed} failed, in "
        f"{timedelta(seconds=round(summary.seconds))} on {workers} model worker{'s' if workers != 1 else ''} "
        f"-> {args.out}"
    )
    return 1 if summary.failed else 0


def _extras(args: argparse.Namespace):  # -> cohort.asking.Extras
    """--evidence (maps into ANSWERS-evidence/ beside the answers) and --zero-shot's labels, checked."""
    from antoni_bridge.cohort.asking import Extras
    from antoni_bridge.engine.prism_heads import prompt_sets

    labels = tuple(label.strip() for label in args.zero_shot.split(",")) if args.zero_shot else ()
    if labels:
        prompt_sets(list(labels), None)  # two to 64 different labels, said before any model loads
    folder = args.out.with_name(f"{args.out.stem}-evidence") if args.evidence else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    return Extras(folder.resolve() if folder else None, labels)


def _check_answers_file(out: Path) -> None:
    from antoni_bridge.errors import BridgeError

    if out.suffix.lower() not in (".parquet", ".csv"):
        raise BridgeError(f"--out {out} is neither .parquet nor .csv.", "name it NAME.parquet or NAME.csv")
    if out.is_dir():
        raise BridgeError(f"--out {out} is a folder.", "give a file name, e.g. answers.parquet")


def _model_workers(ray, args: argparse.Namespace):  # -> (ModelChoice, resources, workers)
    """The models as the options name them, on the cluster's GPUs when it has any, and how many actors."""
    from dataclasses import replace

    from antoni_bridge.cohort.runtime import cluster_resources
    from antoni_bridge.errors import BridgeError
    from antoni_bridge.model_sources import model_choice

    if args.gpus_per_worker <= 0:
        raise BridgeError("--gpus-per-worker must be positive.", "leave it out for one GPU per model worker")
    cpus, gpus = cluster_resources(ray)
    device = args.device or ("cuda" if gpus > 0 else "cpu")
    choice = replace(model_choice(argparse.Namespace(**{**vars(args), "device": "cpu"})), device=device)
    threads = float(args.threads or 1)
    if device == "cpu":
        workers = args.workers or 1
        resources = {"num_cpus": threads}
    else:
        workers = args.workers or max(1, int(gpus / args.gpus_per_worker))
        resources = {"num_cpus": threads, "num_gpus": args.gpus_per_worker}
    if workers < 1 or workers * threads > cpus:
        hint = "use fewer --workers or --threads"
        raise BridgeError(f"{workers} model workers of {threads:g} CPUs do not fit {cpus:g} CPUs.", hint)
    return choice, resources, workers


def _embed_settings(args: argparse.Namespace):  # -> cohort.work.EmbedSettings
    from antoni_bridge.cohort.work import EmbedSettings
    from antoni_bridge.commands.common import check_grid_numbers
    from antoni_bridge.errors import BridgeError
    from antoni_bridge.model_sources import encoder_sources, engine_settings
    from antoni_bridge.slides.grid import GridSpec

    check_grid_numbers(args)
    if args.block_tiles < 1 or args.gpus_per_worker <= 0:
        raise BridgeError("--block-tiles and --gpus-per-worker must be positive.", "leave them out for the defaults")
    tile, slide = encoder_sources(args)
    engine = engine_settings(args)
    return EmbedSettings(
        tile_encoder=tile,
        slide_encoder=slide,
        spec=GridSpec(mpp=args.mpp, size=args.size, min_tissue=args.min_tissue),
        slide_mpp=args.slide_mpp,
        precision=engine.encoder_precision(),
        batch_size=engine.batch_size or 64,
        block_tiles=args.block_tiles,
        worker_cpus=float(args.threads or 1),
        gpus_per_worker=args.gpus_per_worker,
    )


def _on_device(ray, args: argparse.Namespace, settings):  # -> EmbedSettings
    """--device as given, else CUDA when the cluster has GPUs; larger batches on a GPU unless set."""
    from dataclasses import replace

    from antoni_bridge.cohort.runtime import cluster_resources

    _, gpus = cluster_resources(ray)
    device = args.device or ("cuda" if gpus > 0 else "cpu")
    batch = settings.batch_size if args.batch_size or device == "cpu" else 256
    return replace(settings, device=device, batch_size=batch)


class _ray:
    """Ray for the command: started here (and shut down after) or joined."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args

    def __enter__(self):
        from antoni_bridge.cohort.runtime import RaySettings, start_ray

        self.ray, self.started = start_ray(RaySettings(self.args.ray_address, self.args.cpus))
        return self.ray

    def __exit__(self, *exc: object) -> None:
        if self.started:
            self.ray.shutdown()


def summary_text(summary, out: Path) -> str:  # summary: cohort.embedding.Summary
    hours = max(summary.seconds, 1e-9) / 3600
    lines = [
        f"{len(summary.records)} slides: {summary.embedded} embedded, {summary.skipped} already done, "
        f"{summary.failed} failed; {summary.tiles:,} tiles in {timedelta(seconds=round(summary.seconds))} "
        f"({summary.tiles / max(summary.seconds, 1e-9):,.0f} tiles/s, {summary.embedded / hours:,.0f} slides/hour) "
        f"on {summary.workers} encoder worker{'s' if summary.workers != 1 else ''}",
        f"feature files and manifest.parquet in {out}",
    ]
    failed = [r for r in summary.records if r.status == "failed"]
    lines += [f"failed: {r.slide}: {r.error}" for r in failed[:20]]
    if len(failed) > 20:
        lines.append(f"... and {len(failed) - 20} more failed (see the manifest)")
    return "\n".join(lines)
