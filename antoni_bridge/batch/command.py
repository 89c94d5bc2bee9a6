"""`antoni-bridge batch`: its options, and the run from SOURCE to the written answers."""

from __future__ import annotations

import argparse
import contextlib
from collections import defaultdict
from pathlib import Path
from typing import Any

from antoni_bridge.batch import qupath_project
from antoni_bridge.batch.geojson import Choice, answered_feature, write_feature_collection
from antoni_bridge.batch.results import Outputs, ResultsLog, answer_metadata, description, write_tables
from antoni_bridge.batch.runner import Summary, run_items
from antoni_bridge.batch.sources import Image, Item, items, read_questions, slide_images
from antoni_bridge.errors import BridgeError

FAILURES_SHOWN = 10


def add_commands(commands: argparse._SubParsersAction) -> None:
    from antoni_bridge.encoders import PRISM_ID, VIRCHOW_ID
    from antoni_bridge.model_sources import model_options

    batch = commands.add_parser(
        "batch", help="ask questions about every image and annotation of a QuPath project, slide or folder"
    )
    batch.add_argument("source", type=Path, help="a QuPath project (.qpproj), a slide, or a folder of slides")
    batch.add_argument("--question", action="append", default=[], help="a question (repeatable)")
    batch.add_argument("--questions", type=Path, help="a file of questions, one per line")
    batch.add_argument("--geojson", type=Path, help="QuPath GeoJSON export of a single slide's annotations")
    batch.add_argument("--annotations", default="all", help="all (default), none (whole images only) or class:NAME")
    batch.add_argument("--out", type=Path, default=Path("answers.csv"), help="the CSV (default answers.csv)")
    batch.add_argument("--in-place", action="store_true", help="write answers into the project itself, after a backup")
    batch.add_argument("--max-new-tokens", type=int, help="answer length limit (default: the daemon's, 1024)")
    batch.add_argument("--evidence", action="store_true", help="an evidence map per answer (QuPath tiles, GeoJSON)")
    batch.add_argument("--evidence-groups", type=int, default=64, help="tile groups of each map (default 64)")
    batch.add_argument("--evidence-orders", type=int, default=8, help="random orders its faithfulness is against")
    batch.add_argument("--zero-shot", metavar="LABELS", help='Prism zero-shot labels as columns: "label1,label2,..."')
    batch.add_argument("--report", action="store_true", help="Prism's report draft as a column")
    batch.add_argument("--local", action="store_true", help="run the model in this process instead of the daemon")
    batch.add_argument("--demo", action="store_true", help="demo weights (without --local: a demo daemon of its own)")
    model_options(batch, "with --local: ")
    batch.add_argument("--tile-encoder", default=VIRCHOW_ID)
    batch.add_argument("--slide-encoder", default=PRISM_ID)
    batch.add_argument("--device", help="with --local: cpu or cuda (default: cuda when available)")
    batch.add_argument("--cache-dir", type=Path, help="with --local: feature cache (default in ~/.cache)")
    batch.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from antoni_bridge.batch.asking import asker
    from antoni_bridge.batch.extras import Extras

    questions = read_questions(args.question, args.questions)
    choice = Choice.parse(args.annotations)
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise BridgeError("--max-new-tokens must be at least 1.", "leave it out for the default of 1024")
    outputs = Outputs.beside(args.out)
    evidence = outputs.evidence_dir if args.evidence else None
    extras = Extras.parse(evidence, args.zero_shot, args.report, args.evidence_groups, args.evidence_orders)
    project = qupath_project.is_project(args.source)
    _check_outputs(args, outputs, project)
    if project:
        qupath_project.check_copy_target(outputs.project_copy)
        images = qupath_project.read_images(args.source)
    else:
        images = slide_images(args.source, args.geojson, {p.resolve() for p in outputs.files()})
    listed = items(images, questions, choice)
    outputs.log.parent.mkdir(parents=True, exist_ok=True)
    log = ResultsLog(outputs.log, extras.wanted())
    to_ask = any(not (item.problem or log.is_done(item)) for item in listed)
    with asker(args, extras) if to_ask else contextlib.nullcontext(None) as ask:  # no model started for nothing
        summary = run_items(listed, ask, log)
    records = log.of(listed)
    write_tables(outputs, records, summary.as_dict())
    written = [outputs.csv, outputs.json]
    if project:
        written.append(qupath_project.write_answers(args.source, records, outputs.project_copy, args.in_place))
    else:
        written += _write_geojson(images, listed, records, outputs.geojson_dir)
    _print_summary(summary, records, written)
    return 0


def _check_outputs(args: argparse.Namespace, outputs: Outputs, project: bool) -> None:
    """Outputs never replace an input, nor a CSV that an earlier batch (its log beside it) did not write."""
    if args.out.suffix.lower() != ".csv":
        raise BridgeError(f"--out {args.out} should end in .csv.", "the JSON, log and GeoJSON are named after it")
    inputs = {p.resolve() for p in (args.source, args.geojson, args.questions) if p is not None}
    if any(p.resolve() in inputs for p in outputs.files()):
        raise BridgeError("An output file would overwrite one of the inputs.", "choose another --out")
    if args.out.exists() and not outputs.log.exists():
        raise BridgeError(
            f"{args.out} exists and was not written by a batch (no {outputs.log.name} beside it); it is left alone.",
            "choose another --out",
        )
    if args.in_place and not project:
        raise BridgeError("--in-place writes into a QuPath project, but SOURCE is not one.", "leave out --in-place")
    if args.geojson is not None and project:
        raise BridgeError("--geojson is for slides; a project holds its own annotations.", "leave out --geojson")


def _write_geojson(images: list[Image], listed: list[Item], records: list[dict[str, Any]], folder: Path) -> list[Path]:
    """One FeatureCollection per image with answered annotations, for QuPath's File > Import objects."""
    by_key = {r["key"]: r for r in records if r["status"] == "done"}
    answered: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for item in listed:
        if item.annotation is not None and item.key in by_key:
            answered[item.image.name][item.annotation.id].append(by_key[item.key])
    written = []
    for image in images:
        per_annotation = answered.get(image.name)
        if not per_annotation:
            continue
        features = [
            answered_feature(a, description(per_annotation[a.id]), answer_metadata(per_annotation[a.id]))
            for a in image.annotations
            if a.id in per_annotation
        ]
        path = folder / f"{image.name}.geojson"
        write_feature_collection(path, features)
        written.append(path)
    return written


def _print_summary(summary: Summary, records: list[dict[str, Any]], written: list[Path]) -> None:
    done = sum(r["status"] == "done" for r in records)
    print(
        f"{summary.answered} answered, {summary.failed} failed, {summary.skipped} done before "
        f"({done} of {len(records)} answered in all) in {summary.seconds:.1f} s"
    )
    for failure in summary.failures[:FAILURES_SHOWN]:
        print(f"  failed: {failure['image']} {failure['annotation'] or '(whole image)'}: {failure['reason']}")
    if len(summary.failures) > FAILURES_SHOWN:
        print(f"  ... {len(summary.failures) - FAILURES_SHOWN} more failures: see the CSV")
    if any(r["demo"] for r in records):
        from antoni_bridge.demo_assets import DEMO_NOTE

        print(DEMO_NOTE)
    print("written: " + ", ".join(str(p) for p in written))
