"""`status`, `stop` and `cancel`: asking the running daemon about itself."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_commands(commands: argparse._SubParsersAction) -> None:
    status = commands.add_parser("status", help="the daemon's models, device, GPU memory and queue")
    status.add_argument("--json", action="store_true", help="print the daemon's status reply as JSON")
    status.set_defaults(run=run_status)
    stop = commands.add_parser("stop", help="stop the daemon")
    stop.set_defaults(run=run_stop)
    cancel = commands.add_parser("cancel", help="cancel a queued or running job")
    cancel.add_argument("job")
    cancel.set_defaults(run=run_cancel)


def run_status(args: argparse.Namespace) -> int:
    from antoni_bridge.client import Client

    with Client() as client:
        status = client.request("status").content
    print(json.dumps(status, indent=2) if args.json else "\n".join(status_lines(status)))
    return 0


def status_lines(status: dict[str, Any]) -> list[str]:
    """The status reply in plain words: what answers, on what, with how much memory, and what waits."""
    provenance = status.get("provenance") or {}
    sha = provenance.get("weights_sha256")
    revision = provenance.get("weights_revision")
    weights = str(provenance.get("weights", "?")) + (f" (revision {revision})" if revision else "")
    lines = [
        f"weights: {weights}" + (" [demo: random weights]" if provenance.get("demo") else ""),
        f"weights sha256: {sha[:16] if sha else 'not yet known (computed when the model loads)'}",
        f"device: {status.get('device', '?')}; loaded: {', '.join(status.get('loaded') or []) or 'nothing yet'}",
        _gpu_line(status.get("gpu")),
        _queue_line(status.get("queue") or {}),
    ]
    cache = status.get("cache") or {}
    if cache:
        lines.append(
            f"cache: {cache.get('memory_entries', 0)} latents in memory, {cache.get('disk_entries', 0)} on disk "
            f"({cache.get('disk_bytes', 0) / 2**20:.1f} MiB)"
        )
    return lines


def _gpu_line(gpu: dict[str, float] | None) -> str:
    if not gpu:
        return "GPU memory: no GPU"
    gib = 1024.0
    return (
        f"GPU memory: {gpu['allocated_mib'] / gib:.1f} GiB in use by the daemon "
        f"({gpu['reserved_mib'] / gib:.1f} GiB reserved), {gpu['free_mib'] / gib:.1f} of "
        f"{gpu['total_mib'] / gib:.1f} GiB free"
    )


def _queue_line(queue: dict[str, Any]) -> str:
    running = queue.get("running")
    now = "idle"
    if running is not None:
        step = f"{running['stage']} {running['done']}/{running['total']}"
        now = f"running {running['kind']} job {running['job_id']} ({step})"
    return f"queue: {now}; {len(queue.get('waiting', []))} waiting of {queue.get('capacity', '?')}"


def run_stop(args: argparse.Namespace) -> int:
    from antoni_bridge.client import Client

    with Client() as client:
        client.request("shutdown")
    print("the daemon is stopping")
    return 0


def run_cancel(args: argparse.Namespace) -> int:
    from antoni_bridge.client import Client

    with Client() as client:
        client.request("cancel", {"job_id": args.job})
    print(f"cancelled {args.job}")
    return 0
