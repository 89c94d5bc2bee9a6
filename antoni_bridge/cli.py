"""The `antoni-bridge` command: the parser and the dispatch; each command lives in antoni_bridge.commands
(desk, batch, training and the QuPath installer in their own packages).

Every failure a user can cause ends in one line saying what went wrong, one line saying what to do,
and exit status 2; no traceback (unless --verbose).
"""

from __future__ import annotations

import argparse
import difflib
import logging
import re
import sys
import warnings
from collections.abc import Sequence

from antoni_bridge import __version__, platforms, qupath_install
from antoni_bridge.batch import command as batch
from antoni_bridge.commands import (
    ask,
    cohort,
    daemon_control,
    demo,
    embed,
    make_demo,
    report,
    serve,
    similar,
    tiles,
    zero_shot,
)
from antoni_bridge.desk import command as desk
from antoni_bridge.errors import BridgeError
from antoni_bridge.train import command as training

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    platforms.utf8_output()
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        _refuse_extras(parser, args, extras)
    if not hasattr(args, "run"):
        parser.print_help()
        return EXIT_USER_ERROR
    if not args.verbose:
        quiet_libraries()
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


def quiet_libraries() -> None:
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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="antoni-bridge", description="ANTONI-Alpha on whole slides, locally.")
    parser.add_argument("--verbose", action="store_true", help="show tracebacks of errors")
    parser.add_argument("--version", action="version", version=f"antoni-bridge {__version__}")
    commands = parser.add_subparsers(title="commands", dest="command")
    commands_in_order = (
        make_demo,
        tiles,
        embed,
        ask,
        zero_shot,
        report,
        similar,
        serve,
        daemon_control,
        demo,
        desk,
        training,
    )
    for module in (*commands_in_order, batch, cohort, qupath_install):
        module.add_commands(commands)
    for command in commands.choices.values():  # --verbose after the command too
        command.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


if __name__ == "__main__":
    sys.exit(main())
