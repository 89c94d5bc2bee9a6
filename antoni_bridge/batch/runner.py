"""Running the items one at a time: done ones skipped, each result logged as soon as it is known, a
failed item recorded with its reason while the run goes on, a progress bar, a summary at the end."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from antoni_bridge.batch.asking import Asker, OnStage
from antoni_bridge.batch.results import ResultsLog, record
from antoni_bridge.batch.sources import Item
from antoni_bridge.client import DaemonBusy, DaemonUnreachable
from antoni_bridge.errors import BridgeError


@dataclass
class Summary:
    answered: int = 0
    failed: int = 0
    skipped: int = 0  # done in an earlier run
    seconds: float = 0.0
    failures: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"answered": self.answered, "failed": self.failed, "skipped": self.skipped, "seconds": self.seconds}


def run_items(items: list[Item], ask: Asker | None, log: ResultsLog) -> Summary:
    """`ask` may be None when every item is done or cannot be asked about."""
    summary = Summary()
    start = time.perf_counter()
    todo = [item for item in items if not log.is_done(item)]
    summary.skipped = len(items) - len(todo)
    with tqdm(total=len(items), initial=summary.skipped, unit="item", desc="batch", file=sys.stderr) as bar:
        for item in todo:
            bar.set_postfix_str(item.label, refresh=True)
            result = _run_one(item, ask, lambda stage, label=item.label: bar.set_postfix_str(f"{label}: {stage}"))
            log.append(result)
            if result["status"] == "done":
                summary.answered += 1
            else:
                summary.failed += 1
                summary.failures.append(result)
            bar.update()
    summary.seconds = time.perf_counter() - start
    return summary


def _run_one(item: Item, ask: Asker | None, on_stage: OnStage) -> dict[str, Any]:
    if item.problem or ask is None:
        return record(item, reason=item.problem)
    try:
        return record(item, ask(item, on_stage))
    except (DaemonUnreachable, DaemonBusy):  # every later item would fail the same way: stop, keeping what is done
        raise
    except BridgeError as exc:
        return record(item, reason=str(exc))
