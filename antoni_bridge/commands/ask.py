"""`ask`: one question about a slide, a region or a features file, through the daemon or (`--local`) the
engine in this process; `--choices` scores multiple choice instead; `--follow-up` continues the last
conversation. Only the decoding options the user gives are sent: the engine's defaults fill the rest.
`--evidence` then runs the `explain` job on the answer (the daemon's, or with `--local` the engine's) and
writes its map (QuPath GeoJSON, and with `--evidence-png` a picture over the overview)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from antoni_bridge.commands.common import ProgressBars, region_options, run_job, slide_request
from antoni_bridge.demo_assets import DEMO_NOTE
from antoni_bridge.errors import BridgeError
from antoni_bridge.model_sources import encoder_options, model_options

LOCAL_ONLY = ("quant", "weights", "revision", "llm", "device", "precision", "batch_size", "threads", "cache_dir",
              "tile_encoder", "slide_encoder", "demo")  # fmt: skip


def add_commands(commands: argparse._SubParsersAction) -> None:
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
    model_options(ask, "with --local: ")
    decoding = ask.add_mutually_exclusive_group()
    decoding.add_argument("--greedy", action="store_true", help="greedy decoding (the default)")
    decoding.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    ask.add_argument("--temperature", type=float, help="with --sample (default 1.0)")
    ask.add_argument("--top-p", type=float, help="with --sample (default 1.0: no nucleus cut)")
    ask.add_argument("--top-k", type=int, help="with --sample (default 0: no top-k cut)")
    ask.add_argument("--seed", type=int, help="seed for sampling")
    ask.add_argument("--max-new-tokens", type=int, help="answer length limit (default 1024)")
    ask.add_argument("--choices", help='multiple choice instead: "A=first answer,B=second answer"')
    ask.add_argument("--json", action="store_true", help="print one JSON object (answer, token ids, provenance)")
    ask.add_argument("--follow-up", action="store_true", help="continue the last conversation about this slide")
    ask.add_argument(
        "--evidence",
        type=Path,
        metavar="MAP.geojson",
        help="after the answer, map which tiles it depends on: QuPath tile objects (File > Import objects)",
    )
    ask.add_argument("--evidence-png", type=Path, metavar="MAP.png", help="the same map over the slide's overview")
    region_options(ask)
    encoder_options(ask)
    ask.set_defaults(run=run, local_defaults={name: ask.get_default(name) for name in LOCAL_ONLY})


def run(args: argparse.Namespace) -> int:
    _check_local_only(args, args.local_defaults)
    slide, question = _slide_and_question(args)
    choices = _parse_choices(args.choices) if args.choices is not None else None
    if not question.strip():
        raise BridgeError("The question is empty.", 'ask something, e.g. "What organ is this tissue from?"')
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise BridgeError("--max-new-tokens must be at least 1.", "leave it out for the default of 1024")
    if choices and args.follow_up:
        raise BridgeError("Multiple choice scores one question; it does not follow up.", "leave out --follow-up")
    _check_evidence_options(args, slide, choices)
    request = slide_request(args, slide) if slide is not None else None
    if choices:
        score = _score_local if args.local else _score
        done = score(args, request, question, choices[1])
        return _print_choices(args, choices, done)
    from antoni_bridge import conversations

    key = conversations.conversation_key(
        slide or args.features, request.region.key() if request and request.region else ""
    )
    conversation = (conversations.load(key) if args.follow_up else []) + [{"role": "user", "content": question}]
    stream = None if args.json else (lambda text: print(text, end="", flush=True))
    engine = None
    if args.local:
        _check_grid_is_trained(request, local=True)
        engine = _engine(args)
        done = _answer_local(engine, args, request, conversation, stream)
    else:
        content = {**_job_content(args, request), "conversation": conversation, "options": _options(args)}
        done = run_job("ask", content, stream)
    wanted = args.evidence or args.evidence_png
    if not args.json:
        _print_answer(args, done)
    explained = _explain(args, request, conversation, done, engine) if wanted else None
    if args.json:
        _print_record(args, done, explained)
    elif explained is not None:
        _print_evidence(args, done, explained)
    conversations.save(key, [*conversation, {"role": "assistant", "content": done["answer"]}])
    return 0


def _check_evidence_options(args: argparse.Namespace, slide: Path | None, choices) -> None:
    """Refused before the question is asked, so no answer is waited for in vain."""
    if not (args.evidence or args.evidence_png):
        return
    if choices:
        raise BridgeError("An evidence map explains an answer, not a multiple-choice score.", "leave out --choices")
    if args.evidence_png and slide is None:
        raise BridgeError(
            "--evidence-png draws over the slide's overview; a features file has none.", "ask about the slide"
        )
    outputs = [p for p in (args.evidence, args.evidence_png) if p is not None]
    if len({p.resolve() for p in outputs}) < len(outputs):
        raise BridgeError("--evidence and --evidence-png name the same file.", "give them different names")
    inputs = {p.resolve() for p in (slide, args.features, args.geojson) if p is not None}
    for out in outputs:
        if out.resolve() in inputs:
            raise BridgeError(f"The output {out} is one of the inputs; it would be overwritten.", "choose another name")
        if out.is_dir():
            raise BridgeError(f"{out} is a folder.", "give a file name, e.g. map.geojson")


def _explain(
    args: argparse.Namespace, request, conversation: list[dict[str, str]], done: dict[str, Any], engine
) -> dict[str, Any]:
    """The `explain` job for the answer just given (its tokens fixed by the text), then its files; `engine`:
    the one that answered, with --local (else the daemon explains)."""
    from antoni_bridge import maps

    if not args.json:
        print("Mapping the evidence for this answer...", flush=True)
    if engine is not None:
        from dataclasses import asdict

        with ProgressBars() as bars:
            source = _source(args, request)
            explained = asdict(engine.explain(source, conversation, done["answer"], on_progress=bars.update))
    else:
        content = {**_job_content(args, request), "conversation": conversation, "answer": done["answer"]}
        explained = run_job("explain", content)
    tile_map = maps.evidence_map(explained)
    if args.evidence:
        maps.write_geojson(tile_map, args.evidence)
    if args.evidence_png:
        maps.write_png(tile_map, request.path, args.evidence_png, request.slide_mpp)
    return explained


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
    """The decoding options the user set, as the protocol spells them; the engine fills in the rest."""
    given = {
        "greedy": False if args.sample else True if args.greedy else None,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "seed": args.seed,
        "max_new_tokens": args.max_new_tokens,
    }
    return {name: value for name, value in given.items() if value is not None}


# ---------------------------------------------------------------------------------------------- in this process


def _engine(args: argparse.Namespace):  # -> engine.Engine
    from antoni_bridge.engine import Engine
    from antoni_bridge.model_sources import engine_settings, model_choice

    if not args.verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    return Engine(model_choice(args), args.cache_dir, (), engine_settings(args))


def _source(args: argparse.Namespace, request):  # request: SlideRequest | None -> engine source
    from antoni_bridge.engine import FeaturesSource, SlideSource

    if request is None:
        return FeaturesSource(args.features)
    return SlideSource(request.path, request.region, request.slide_mpp)


def _answer_local(
    engine, args: argparse.Namespace, request, conversation: list[dict[str, str]], stream
) -> dict[str, Any]:
    """The engine in this process (`engine`); the same fields as the daemon's `done`."""
    from antoni_bridge.engine import options_from

    with ProgressBars() as bars:

        def on_text(text: str) -> None:
            bars.close()
            if stream is not None:
                stream(text)

        answer = engine.ask(
            _source(args, request), conversation, options_from(_options(args)), on_text=on_text, on_progress=bars.update
        )
    return {
        "answer": answer.text,
        "stop_reason": answer.stop_reason,
        "token_ids": answer.token_ids,
        "demo": engine.choice.demo,
        "timings": answer.timings,
        "provenance": answer.provenance,
        "latents_from": answer.latents_from,
        "latents_shape": answer.latents_shape,
        "tiles": answer.tiles,
        "region_clipped": answer.region_clipped,
        "cache_hit": answer.cache_hit,
        "reliance": answer.reliance,
    }


def _score_local(args: argparse.Namespace, request, question: str, choices: list[str]) -> dict[str, Any]:
    from dataclasses import asdict

    _check_grid_is_trained(request, local=True)
    engine = _engine(args)
    with ProgressBars() as bars:
        scores = engine.score(_source(args, request), question, choices, on_progress=bars.update)
    return {**asdict(scores), "demo": engine.choice.demo}


def _check_grid_is_trained(request, local: bool) -> None:
    """The engine and the daemon tile at the trained scale only."""
    from antoni_bridge.slides.grid import GridSpec

    if request is not None and request.spec != GridSpec():
        raise BridgeError(
            "Questions are asked at the trained scale only (--mpp 0.5 --size 224 --min-tissue 0).",
            "leave out --mpp, --size and --min-tissue" + ("" if local else ", or add --local"),
        )


# ---------------------------------------------------------------------------------------------- the daemon


def _job_content(args: argparse.Namespace, request) -> dict[str, Any]:
    """What names the latents in a daemon request: the slide (and region), or the features file."""
    if request is None:
        return {"features": str(args.features.resolve())}
    _check_grid_is_trained(request, local=False)
    content: dict[str, Any] = {"slide": str(request.path.resolve())}
    if request.region is not None:
        content["region"] = request.region.to_geojson()
    if request.slide_mpp is not None:
        content["slide_mpp"] = request.slide_mpp
    return content


def _score(args: argparse.Namespace, request, question: str, choices: list[str]) -> dict[str, Any]:
    return run_job("score", {**_job_content(args, request), "question": question, "choices": choices})


# ---------------------------------------------------------------------------------------------- printing


def _print_record(args: argparse.Namespace, done: dict[str, Any], explained: dict[str, Any] | None) -> None:
    """--json: one object, the answer's and (with --evidence) its map's figures."""
    record = {**done, "demo_weights": done["demo"], "front_end": "cli", "options_set": _options(args)}
    if explained is not None:
        record["evidence"] = _evidence_record(args, explained)
    print(json.dumps(record, ensure_ascii=False))


def _print_answer(args: argparse.Namespace, done: dict[str, Any]) -> None:
    """Under the streamed answer: its length, speed and end, then its image reliance."""
    timings = done["timings"]
    limit = done.get("provenance", {}).get("decoding", {}).get("max_new_tokens", args.max_new_tokens)
    print(
        f"\n[{len(done['token_ids'])} of at most {limit} tokens, first after "
        f"{timings['first_token_s'] * 1000:.0f} ms, {timings.get('tokens_per_s', 0.0):.1f} tokens/s, "
        f"stop: {done['stop_reason']}, latents from {done['latents_from']}, {timings['total_s']:.1f} s in all]"
        + (f" {DEMO_NOTE}" if done["demo"] else "")
    )
    if done.get("reliance"):
        print(reliance_line(done["reliance"]))


def _print_evidence(args: argparse.Namespace, done: dict[str, Any], explained: dict[str, Any]) -> None:
    """The map's faithfulness and files (and the reliance, where the answer came without one)."""
    if not done.get("reliance"):
        print(reliance_line(explained["reliance"]))
    print(faithfulness_line(explained))
    written = [str(p) for p in (args.evidence, args.evidence_png) if p is not None]
    print(f"Evidence map ({explained['method']}, {explained['tiles']} tiles in {explained['groups']} groups) "
          f"written to {' and '.join(written)}")  # fmt: skip


def _evidence_record(args: argparse.Namespace, explained: dict[str, Any]) -> dict[str, Any]:
    """What --json tells of the map: its files and figures (the per-tile values are in the files)."""
    figures = {key: explained.get(key) for key in ("method", "tiles", "groups", "faithfulness", "reliance")}
    files = {"geojson": args.evidence, "png": args.evidence_png}
    return {**figures, "files": {kind: str(path) for kind, path in files.items() if path is not None}}


def reliance_line(reliance: dict[str, Any]) -> str:
    """How much the answer depends on this slide, in one line (flagged when it does not)."""
    line = (
        f"Image reliance: {reliance['score']:.3g} (log-likelihood per token: with this slide "
        f"{reliance['with_slide']:.3g}, no image {reliance['no_image']:.3g}, "
        f"another slide {reliance['other_slide']:.3g})"
    )
    return line + (" FLAGGED: this answer does not depend on the image." if reliance["flagged"] else "")


def faithfulness_line(explained: dict[str, Any]) -> str:
    """Whether the map means anything for this answer: its deletion curve against random orders."""
    f = explained["faithfulness"]
    verdict = "the map beats random orders" if f["gap"] > 0 else "the map does no better than random orders"
    return (
        f"Faithfulness: deletion area {f['deletion_area']:.3g} against {f['random_area']:.3g} for "
        f"{f['random_orders']} random orders (gap {f['gap']:.3g}): {verdict}."
    )


def _print_choices(args: argparse.Namespace, choices, done: dict[str, Any]) -> int:
    labels, texts = choices
    ranking = sorted(zip(labels, texts, done["mean_nll"], strict=True), key=lambda row: row[2])
    demo = done["demo"]
    if args.json:
        rows = [{"label": label, "choice": text, "mean_nll": nll} for label, text, nll in ranking]
        seconds, provenance = done["timings"]["total_s"], done.get("provenance")
        result = {"best": ranking[0][0], "ranking": rows, "demo_weights": demo, "seconds": seconds}
        result |= {"provenance": provenance, "front_end": "cli", "options_set": {}}
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
