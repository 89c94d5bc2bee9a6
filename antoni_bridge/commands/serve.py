"""`serve`: the daemon that hosts the models, a transport over one engine; front ends talk to it."""

from __future__ import annotations

import argparse
from pathlib import Path

from antoni_bridge import paths
from antoni_bridge.errors import BridgeError
from antoni_bridge.model_sources import encoder_options, model_options


def add_commands(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="run the daemon that hosts the models (front ends talk to it)")
    serve.add_argument("--address", default="tcp://127.0.0.1:5555", help="where to listen (loopback by default)")
    model_options(serve)
    serve.add_argument("--queue", type=int, default=16, help="jobs that may wait before `busy`")
    serve.add_argument("--client-timeout", type=float, default=3.0, help="cancel the jobs of clients silent this long")
    serve.add_argument(
        "--slide-root", type=Path, action="append", default=[], help="read slides only under this folder (repeatable)"
    )
    serve.add_argument("--allow-remote", action="store_true", help="allow a non-loopback address (CURVE-encrypted)")
    serve.add_argument("--authorized-keys", type=Path, help="with --allow-remote: folder of client public keys")
    serve.add_argument("--log-file", type=Path, help="rotating log (default in ~/.cache/antoni-bridge/logs)")
    encoder_options(serve)
    serve.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from antoni_bridge.daemon.logs import setup_logging
    from antoni_bridge.daemon.server import Daemon
    from antoni_bridge.platforms import keep_files_private

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
    engine = engine_for(args)
    log_file = args.log_file or paths.log_file()
    keep_files_private()  # logs, caches and the key: the user's alone
    setup_logging(log_file, args.verbose)
    print(
        f"antoni-bridge daemon on {args.address} ({'demo' if args.demo else 'real'} weights"
        f"{', CURVE' if curve else ''}); log in {log_file}; stop with `antoni-bridge stop`",
        flush=True,
    )
    Daemon(args.address, engine, paths.connection_file(), args.queue, args.client_timeout, curve).serve()
    return 0


def engine_for(args: argparse.Namespace):  # -> engine.Engine
    """The engine the options describe: models, slide folders, and --precision/--batch-size/--threads."""
    from antoni_bridge.engine import Engine
    from antoni_bridge.model_sources import engine_settings, model_choice

    engine = Engine(model_choice(args), args.cache_dir, args.slide_root, engine_settings(args))
    engine.weights_folder()  # a wrong --weights fails now, not at the first question
    return engine


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
