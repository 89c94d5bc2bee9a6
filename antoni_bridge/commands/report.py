"""`report`: Prism's report draft for a slide, a region or a features file, streamed through the daemon or
(`--local`) from the engine in this process. Prism's BioGPT decoder writes it (a different model from
ANTONI); it is printed under that label."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from antoni_bridge.commands.common import ProgressBars, run_job
from antoni_bridge.commands.zero_shot import (
    DEMO_PRISM_NOTE,
    LOCAL_ONLY,
    add_source_options,
    check_local_only,
    job_content,
    local_engine,
)
from antoni_bridge.engine.prism_heads import (
    DEFAULT_REPORT_PROMPT,
    DEFAULT_REPORT_TOKENS,
    MAX_BEAMS,
    MAX_REPORT_TOKENS,
    REPORT_LABEL,
)
from antoni_bridge.errors import BridgeError


def add_commands(commands: argparse._SubParsersAction) -> None:
    report = commands.add_parser(
        "report",
        help="Prism's report draft for a slide, a region or a features file (not ANTONI)",
        description=f"Prism's decoder continues \"{DEFAULT_REPORT_PROMPT}\" over the slide's latents.",
    )
    report.add_argument("slide", nargs="?", type=Path, help="the slide (or give --features)")
    report.add_argument("--beams", type=int, default=1, help=f"beam search width, 1 (greedy, default) to {MAX_BEAMS}")
    report.add_argument("--max-new-tokens", type=int, default=DEFAULT_REPORT_TOKENS, help="length limit (default 100)")
    report.add_argument(
        "--prompt", default=DEFAULT_REPORT_PROMPT, help=f'where the draft starts ("{DEFAULT_REPORT_PROMPT}")'
    )
    report.add_argument("--json", action="store_true", help="print one JSON object")
    add_source_options(report)
    report.set_defaults(run=run, local_defaults={name: report.get_default(name) for name in LOCAL_ONLY})


def run(args: argparse.Namespace) -> int:
    check_local_only(args)
    if not 1 <= args.beams <= MAX_BEAMS:
        raise BridgeError(f"--beams must be from 1 to {MAX_BEAMS}.", "leave it out for greedy decoding")
    if not 1 <= args.max_new_tokens <= MAX_REPORT_TOKENS:
        raise BridgeError(f"--max-new-tokens must be from 1 to {MAX_REPORT_TOKENS}.", "leave it out for 100")
    if not args.prompt.strip():
        raise BridgeError("The prompt is empty.", f'leave it out for "{DEFAULT_REPORT_PROMPT}"')
    content = {**job_content(args), "prompt": args.prompt, "max_new_tokens": args.max_new_tokens, "beams": args.beams}
    stream = None
    if not args.json:
        print(f"{REPORT_LABEL}:", flush=True)
        stream = lambda text: print(text, end="", flush=True)  # noqa: E731
    done = _local(args, content, stream) if args.local else run_job("report", content, stream)
    if args.json:
        print(json.dumps({**done, "demo_weights": done["provenance"]["demo"], "front_end": "cli"}, ensure_ascii=False))
        return 0
    demo = done["provenance"]["demo"]
    print(
        f"\n[stop: {done['stop_reason']}, {done['timings']['total_s']:.1f} s]" + (f" {DEMO_PRISM_NOTE}" if demo else "")
    )
    return 0


def _local(args: argparse.Namespace, content: dict[str, Any], stream) -> dict[str, Any]:
    from dataclasses import asdict

    from antoni_bridge.engine import source_from

    with ProgressBars() as bars:

        def on_text(text: str) -> None:
            bars.close()
            if stream is not None:
                stream(text)

        result = local_engine(args).report(
            source_from(content),
            content["prompt"],
            content["max_new_tokens"],
            content["beams"],
            on_text=on_text,
            on_progress=bars.update,
        )
    return {**asdict(result), "model": "prism", "label": REPORT_LABEL}
