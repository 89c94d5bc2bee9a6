"""Asking one item: through the running daemon (or a demo daemon of the batch's own), or in-process
with the engine in this process (`--local`), which keeps models and latents loaded between items.

Both return the content of the job's `done` message, its `provenance` completed with what the batch
saves (docs/batch.md); a refusal or failure of the item raises `BridgeError` with the daemon's sentence.
A dead daemon (`DaemonUnreachable`) or one whose queue stays full (`DaemonBusy`) ends the run instead.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from antoni_bridge import paths
from antoni_bridge.batch.extras import Extras, RunJob, adder
from antoni_bridge.batch.sources import Item
from antoni_bridge.client import saved_provenance
from antoni_bridge.errors import BridgeError

OnStage = Callable[[str], None]
FRONT_END = "batch"


class Asker(Protocol):
    def __call__(self, item: Item, on_stage: OnStage) -> dict[str, Any]: ...


def options_set(args: argparse.Namespace) -> dict[str, Any]:
    """The decoding options the user set; the daemon (or the engine) fills in the rest from its defaults."""
    return {} if args.max_new_tokens is None else {"max_new_tokens": args.max_new_tokens}


def job_content(item: Item, options: dict[str, Any]) -> dict[str, Any]:
    """The `ask` request of an item (docs/protocol.md): the slide, the region, one question, and only the
    options the user set."""
    content: dict[str, Any] = {
        "slide": str(item.image.slide.resolve()),
        "conversation": [{"role": "user", "content": item.question}],
    }
    if options:
        content["options"] = options
    if item.region is not None:
        content["region"] = item.region
    return content


@contextlib.contextmanager
def asker(args: argparse.Namespace, extras: Extras) -> Iterator[Asker]:
    """The asker the options call for, released (models, sockets, a demo daemon) when the run ends; with
    `extras`, each answer also carries the extra columns (batch.extras)."""
    options = options_set(args)
    if args.local:
        yield _recording(_local_asker(args, options, extras), {}, options)
    elif args.demo:
        with _own_demo_daemon() as connection, _daemon_asker(connection, options, extras) as ask:
            yield ask
    else:
        with _daemon_asker(None, options, extras) as ask:
            yield ask


@contextlib.contextmanager
def _daemon_asker(connection: Path | None, options: dict[str, Any], extras: Extras) -> Iterator[Asker]:
    from antoni_bridge.client import Cancelled, Client, provenance_in_hello

    with Client(connection) as client:
        stage: list[OnStage] = [lambda name: None]

        def run(kind: str, content: dict[str, Any]) -> dict[str, Any]:
            try:
                return client.run_job(kind, content, on_progress=lambda p: stage[0](p.stage))
            except Cancelled:
                raise BridgeError("The job was cancelled in the daemon.", "run the batch again to retry it") from None

        yield _recording(
            _with_extras(run, options, extras, stage), provenance_in_hello(client.request("hello").content), options
        )


def _with_extras(run: RunJob, options: dict[str, Any], extras: Extras, stage: list[OnStage]) -> Asker:
    """An asker over `run` (one job to its done): the answer, then the extra columns it was asked for."""
    columns = adder(extras, run) if extras else None

    def ask(item: Item, on_stage: OnStage) -> dict[str, Any]:
        stage[0] = on_stage
        content = job_content(item, options)
        done = run("ask", content)
        return {**done, **columns(item, content, done)} if columns else done

    return ask


def _recording(ask: Asker, known: dict[str, Any], options: dict[str, Any]) -> Asker:
    """`ask` with each answer's provenance completed as the batch saves it (`known`: what the daemon's
    `hello` says of its weights, for answers that carry no provenance of their own)."""

    def recorded(item: Item, on_stage: OnStage) -> dict[str, Any]:
        return saved_provenance(ask(item, on_stage), known, FRONT_END, options)

    return recorded


@contextlib.contextmanager
def _own_demo_daemon() -> Iterator[Path]:
    """A daemon with the demo weights on a free port and a connection file of its own (one the user
    runs is left alone), stopped when the batch ends."""
    from antoni_bridge.client import Client
    from antoni_bridge.daemon.launch import start_daemon

    connection = paths.home() / "batch-daemon.json"
    log = paths.home() / "logs" / "batch-daemon.log"
    print("starting a daemon with the demo weights", flush=True)
    process = start_daemon(["--demo", "--address", "tcp://127.0.0.1:*", "--log-file", str(log)], connection)
    stopping = False
    try:
        yield connection
        with Client(connection) as client:
            client.request("shutdown")
        stopping = True
    finally:
        _stop(process, 30.0 if stopping else 0.0)
        connection.unlink(missing_ok=True)


def _stop(process: subprocess.Popen[bytes], grace_s: float) -> None:
    """Wait for a daemon asked to stop; end one that was not, or does not."""
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.terminate()
        process.wait()


def _local_asker(args: argparse.Namespace, options: dict[str, Any], extras: Extras) -> Asker:
    """The engine in this process, models and latents kept between items: the daemon's answers, no sockets."""
    from dataclasses import asdict

    from antoni_bridge.engine import Engine, options_from, source_from
    from antoni_bridge.model_sources import model_choice

    engine = Engine(model_choice(args), args.cache_dir)
    stage: list[OnStage] = [lambda name: None]

    def run(kind: str, content: dict[str, Any]) -> dict[str, Any]:
        source, progress = source_from(content), {"on_progress": lambda p: stage[0](p.stage)}
        if kind == "explain":
            sizes = {"groups": content["groups"], "random_orders": content["random_orders"]}
            return asdict(engine.explain(source, content["conversation"], content["answer"], **sizes, **progress))
        if kind == "zero_shot":
            return asdict(engine.zero_shot(source, content["labels"], **progress))
        if kind == "report":
            return asdict(engine.report(source, **progress))
        answer = engine.ask(source, content["conversation"], options_from(options), **progress)
        return {
            "answer": answer.text,
            "demo": engine.choice.demo,
            "token_ids": answer.token_ids,
            "latents_from": answer.latents_from,
            "tiles": answer.tiles,
            "timings": answer.timings,
            "provenance": answer.provenance,
        }

    return _with_extras(run, options, extras, stage)
