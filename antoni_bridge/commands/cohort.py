"""`cohort embed` and `cohort ask`: whole cohorts on Ray (a local Ray, or a cluster with --ray-address).

Ray is the optional `cohort` extra; without it these commands say how to install it and nothing else
changes. docs/cohort.md says how to run on a workstation and on a cluster.
"""

from __future__ import annotations

import argparse
from datetime import timedelta
from pathlib import Path

from antoni_bridge.model_sources import encoder_options

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
    settings = _embed_settings(args)
    slides = read_cohort(args.source)
    with _ray(args) as ray:
        settings = _on_device(ray, args, settings)
        summary = embed_cohort(ray, slides, args.out, settings, args.workers, CohortProgress(len(slides)))
    print(summary_text(summary, args.out))
    return 1 if summary.failed else 0


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
