"""What a batch adds to each answer when asked (issues 16 and 17): the answer's evidence map, written as
QuPath tile objects, and Prism's zero-shot labels and report draft for the item's image or annotation,
as columns. The map's file is antoni_bridge.maps' (the same the CLI's `ask --evidence` writes). Each
comes from its own job (`explain`, `zero_shot`, `report`) on the item's source; the
zero-shot labels and the report are asked once per image or annotation, whatever the questions.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from antoni_bridge.batch.sources import Item
from antoni_bridge.errors import BridgeError
from antoni_bridge.maps import evidence_map, write_geojson

RunJob = Callable[[str, dict[str, Any]], dict[str, Any]]  # a job's type and content -> its done
COLUMNS = ("evidence_map", "evidence_gap", "zero_shot", "zero_shot_best", "prism_report")
MAX_LABELS = 64
GROUPS, ORDERS = (2, 1024), (0, 64)  # what the explain job accepts


@dataclass(frozen=True)
class Extras:
    """What the options ask for besides the answers."""

    evidence_dir: Path | None = None  # one map per answer, in this folder
    labels: tuple[str, ...] = ()  # Prism zero-shot labels
    report: bool = False  # Prism's report draft
    groups: int = 64  # the evidence map's tile groups (explain's `groups`)
    orders: int = 8  # random orders its faithfulness figure is measured against (explain's `random_orders`)

    @classmethod
    def parse(
        cls, evidence_dir: Path | None, labels: str | None, report: bool, groups: int = 64, orders: int = 8
    ) -> Extras:
        names = tuple(label.strip() for label in (labels or "").split(",") if label.strip())
        if labels is not None and not 2 <= len(names) <= MAX_LABELS:
            raise BridgeError(
                f"--zero-shot needs 2 to {MAX_LABELS} labels, comma-separated; got {len(names)}.",
                '--zero-shot "adenocarcinoma,squamous cell carcinoma,normal"',
            )
        if len(set(names)) != len(names):
            raise BridgeError("--zero-shot names a label twice.", "give each label once")
        if not (GROUPS[0] <= groups <= GROUPS[1] and ORDERS[0] <= orders <= ORDERS[1]):
            raise BridgeError(
                f"--evidence-groups must be {GROUPS[0]} to {GROUPS[1]} and --evidence-orders {ORDERS[0]} to "
                f"{ORDERS[1]}; got {groups} and {orders}.",
                "leave them out for 64 groups and 8 orders",
            )
        return cls(evidence_dir, names, report, groups, orders)

    def __bool__(self) -> bool:
        return bool(self.wanted())

    def wanted(self) -> tuple[str, ...]:
        """The columns every answer of the run must hold."""
        asked = {
            "evidence_map": self.evidence_dir is not None,
            "zero_shot": bool(self.labels),
            "prism_report": self.report,
        }
        return tuple(column for column, on in asked.items() if on)


def adder(extras: Extras, run: RunJob) -> Callable[[Item, dict[str, Any], dict[str, Any]], dict[str, Any]]:
    """A function giving the extra columns of an answered item (`content`: its `ask` request, `done`: the
    answer); zero-shot and report results are kept per image or annotation for the run."""
    per_target: dict[tuple[str, str, str], dict[str, Any]] = {}

    def once(kind: str, item: Item, content: dict[str, Any]) -> dict[str, Any]:
        key = (kind, item.image.identity, item.target)
        if key not in per_target:
            per_target[key] = run(kind, content)
        return per_target[key]

    def columns(item: Item, content: dict[str, Any], done: dict[str, Any]) -> dict[str, Any]:
        source = {name: content[name] for name in ("slide", "region") if name in content}
        found: dict[str, Any] = {}
        if extras.labels:
            shot = once("zero_shot", item, {**source, "labels": list(extras.labels)})
            pairs = sorted(zip(shot["labels"], shot["probabilities"], strict=True), key=lambda pair: -pair[1])
            found["zero_shot"] = "; ".join(f"{label}={p:.3f}" for label, p in pairs)
            found["zero_shot_best"] = pairs[0][0]
        if extras.report:
            found["prism_report"] = once("report", item, source)["report"]
        if extras.evidence_dir is not None:
            found["evidence_map"] = ""  # an empty answer has no map
        if extras.evidence_dir is not None and done["answer"].strip():
            asked = {**source, "conversation": content["conversation"], "answer": done["answer"]}
            asked |= {"groups": extras.groups, "random_orders": extras.orders}
            explained = run("explain", asked)
            path = extras.evidence_dir / f"{_file_name(item.image.name)}-{item.key}.geojson"
            write_geojson(evidence_map(explained), path)
            found["evidence_map"] = str(path)
            found["evidence_gap"] = explained["faithfulness"]["gap"]
        return found

    return columns


def _file_name(name: str) -> str:
    """An image's name as part of a file name (a QuPath image name may hold / or :)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "image"
    return safe if len(safe) <= 80 else safe[:60] + hashlib.sha256(safe.encode()).hexdigest()[:8]
