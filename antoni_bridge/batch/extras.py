"""What a batch adds to each answer when asked (issues 16 and 17): the answer's evidence map, written as
QuPath tile objects, and Prism's zero-shot labels and report draft for the item's image or annotation,
as columns. Each comes from its own job (`explain`, `zero_shot`, `report`) on the item's source; the
zero-shot labels and the report are asked once per image or annotation, whatever the questions.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from antoni_bridge.batch.sources import Item
from antoni_bridge.errors import BridgeError
from antoni_bridge.files import write_atomically

RunJob = Callable[[str, dict[str, Any]], dict[str, Any]]  # a job's type and content -> its done
COLUMNS = ("evidence_map", "evidence_gap", "zero_shot", "zero_shot_best", "prism_report")
EVIDENCE = "ANTONI evidence"  # the measurement and class of the tiles in QuPath
MAX_LABELS = 64


@dataclass(frozen=True)
class Extras:
    """What the options ask for besides the answers."""

    evidence_dir: Path | None = None  # one map per answer, in this folder
    labels: tuple[str, ...] = ()  # Prism zero-shot labels
    report: bool = False  # Prism's report draft

    @classmethod
    def parse(cls, evidence_dir: Path | None, labels: str | None, report: bool) -> Extras:
        names = tuple(label.strip() for label in (labels or "").split(",") if label.strip())
        if labels is not None and not 2 <= len(names) <= MAX_LABELS:
            raise BridgeError(
                f"--zero-shot needs 2 to {MAX_LABELS} labels, comma-separated; got {len(names)}.",
                '--zero-shot "adenocarcinoma,squamous cell carcinoma,normal"',
            )
        if len(set(names)) != len(names):
            raise BridgeError("--zero-shot names a label twice.", "give each label once")
        return cls(evidence_dir, names, report)

    def __bool__(self) -> bool:
        return self.evidence_dir is not None or bool(self.labels) or self.report


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
        if extras.evidence_dir is not None and done["answer"].strip():
            asked = {**source, "conversation": content["conversation"], "answer": done["answer"]}
            explained = run("explain", asked)
            path = extras.evidence_dir / f"{_file_name(item.image.name)}-{item.key}.geojson"
            write_tile_map(explained, path)
            found["evidence_map"] = str(path)
            found["evidence_gap"] = explained["faithfulness"]["gap"]
        return found

    return columns


def write_tile_map(explained: dict[str, Any], path: Path) -> Path:
    """The evidence per tile as QuPath tile objects (File > Import objects), the value as a measurement.

    Minimal on purpose: helper G's antoni_bridge.maps writes the same tiles with colours; use it once merged."""
    size = int(explained["tile_size"])
    features = [
        {
            "type": "Feature",
            "geometry": {
                "type": "Polygon",
                "coordinates": [[[x, y], [x + size, y], [x + size, y + size], [x, y + size], [x, y]]],
            },
            "properties": {
                "objectType": "tile",
                "classification": {"name": EVIDENCE},
                "measurements": {EVIDENCE: value, f"{EVIDENCE} group": group},
            },
        }
        for (x, y), value, group in zip(explained["coords"], explained["values"], explained["group_of"], strict=True)
    ]
    write_atomically(path, json.dumps({"type": "FeatureCollection", "features": features}, allow_nan=False) + "\n")
    return path


def _file_name(name: str) -> str:
    """An image's name as part of a file name (a QuPath image name may hold / or :)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "image"
    return safe if len(safe) <= 80 else safe[:60] + hashlib.sha256(safe.encode()).hexdigest()[:8]
