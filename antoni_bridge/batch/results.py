"""The results of a batch: a log that makes it resumable, and the tables and texts made from it.

The log (`ANSWERS.jsonl` beside the CSV) gets one JSON line per finished item, written with a single
append and flushed to disk, so an interrupted run loses at most the item it was working on; a line
torn by a crash is cut off when the log is next opened. A later line for the same item (a retry of a
failed one) supersedes the earlier. The CSV and JSON are rewritten from the log at the end of each run.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from antoni_bridge.batch.extras import COLUMNS as EXTRA_COLUMNS
from antoni_bridge.batch.sources import Item
from antoni_bridge.demo_assets import DEMO_NOTE
from antoni_bridge.files import write_atomically

COLUMNS = (
    "image", "slide", "annotation", "annotation_id", "classes", "question", "status", "answer", "reason",
    "demo", "latents_from", "tiles", "tokens", "first_token_s", "total_s", "finished", "key", "stop_reason",
    "provenance",
)  # fmt: skip


@dataclass(frozen=True)
class Outputs:
    """Every file a batch writes, named after --out."""

    csv: Path
    json: Path
    log: Path
    geojson_dir: Path
    project_copy: Path
    evidence_dir: Path  # one evidence map per answer (--evidence)

    @classmethod
    def beside(cls, out: Path) -> Outputs:
        stem = out.with_suffix("")
        return cls(
            out,
            stem.with_suffix(".json"),
            stem.with_suffix(".jsonl"),
            stem.with_name(stem.name + "-geojson"),
            stem.with_name(stem.name + "-project"),
            stem.with_name(stem.name + "-evidence"),
        )

    def files(self) -> list[Path]:
        return [self.csv, self.json, self.log]


class ResultsLog:
    """The finished items of this and earlier runs of the same batch, the latest record per item."""

    def __init__(self, path: Path, wanted: tuple[str, ...] = ()) -> None:
        self.path, self.wanted = path, wanted  # wanted: columns a done record must hold (batch.extras)
        self.records: dict[str, dict[str, Any]] = {}
        if path.is_file():
            self._read()

    def _read(self) -> None:
        data = self.path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) < len(data):  # a crash tore the last line: drop it, so appends start on a new line
            os.truncate(self.path, len(complete))
        for line in complete.decode("utf-8").splitlines():
            record = json.loads(line)
            self.records[record["key"]] = record

    def is_done(self, item: Item) -> bool:
        """Answered, with every column asked for this run (an answer from a run without them is asked again)."""
        record = self.records.get(item.key, {})
        return record.get("status") == "done" and all(column in record for column in self.wanted)

    def append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
        with self.path.open("ab", buffering=0) as log:  # unbuffered: the line goes out in one write
            log.write(line)
            os.fsync(log.fileno())
        self.records[record["key"]] = record

    def of(self, items: list[Item]) -> list[dict[str, Any]]:
        """The records of these items, in their order (earlier runs may hold items no longer asked)."""
        return [self.records[item.key] for item in items if item.key in self.records]


def record(item: Item, done: dict[str, Any] | None = None, reason: str = "") -> dict[str, Any]:
    """One log line: an answer with its timings (`done` as the daemon sends it), or the reason it failed."""
    done = done or {}
    timings = done.get("timings", {})
    return {
        "key": item.key,
        "image": item.image.name,
        "slide": str(item.image.slide) if item.image.slide else "",
        "entry_id": item.image.entry_id,
        "annotation": item.annotation.label if item.annotation else ("" if item.target == "image" else item.target),
        "annotation_id": item.annotation.id if item.annotation else "",
        "classes": "; ".join(item.annotation.classes) if item.annotation else "",
        "question_number": item.question_number,
        "question": item.question,
        "status": "done" if done else "failed",
        "answer": done.get("answer", ""),
        "reason": reason,
        "demo": bool(done.get("demo", False)),
        "latents_from": done.get("latents_from", ""),
        "tiles": done.get("tiles"),
        "tokens": len(done.get("token_ids", [])),
        "first_token_s": timings.get("first_token_s"),
        "total_s": timings.get("total_s"),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "stop_reason": done.get("provenance", {}).get("stop_reason", ""),
        "provenance": done.get("provenance", {}),
        "token_ids": done.get("token_ids", []),  # in the JSON and the log, not the CSV: the answer exactly
        **{column: done[column] for column in EXTRA_COLUMNS if column in done},  # asked for (batch.extras)
    }


def write_tables(outputs: Outputs, records: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    buffer = io.StringIO()
    extra = [column for column in EXTRA_COLUMNS if any(column in r for r in records)]
    writer = csv.DictWriter(buffer, fieldnames=[*COLUMNS, *extra], extrasaction="ignore")
    writer.writeheader()
    writer.writerows({**r, "provenance": _provenance_text(r)} for r in records)
    write_atomically(outputs.csv, buffer.getvalue())
    text = json.dumps({"summary": summary, "results": records}, ensure_ascii=False, allow_nan=False, indent=1)
    write_atomically(outputs.json, text)


def _provenance_text(record: dict[str, Any]) -> str:
    """A record's provenance as one JSON cell (empty for a failed item, and for logs of older versions)."""
    provenance = record.get("provenance")
    return json.dumps(provenance, ensure_ascii=False, sort_keys=True) if provenance else ""


def description(answered: list[dict[str, Any]]) -> str:
    """What QuPath shows as the object's description: the answer, or each question with its answer."""
    if len(answered) == 1:
        text = answered[0]["answer"].strip()
    else:
        text = "\n\n".join(f"Q: {r['question']}\nA: {r['answer'].strip()}" for r in answered)
    return text + (f"\n{DEMO_NOTE}" if any(r["demo"] for r in answered) else "")


def answer_metadata(answered: list[dict[str, Any]]) -> dict[str, str]:
    """The questions and answers one by one, as metadata entries (QuPath keeps metadata as strings)."""
    metadata = {}
    for r in answered:
        metadata[f"ANTONI question {r['question_number']}"] = r["question"]
        metadata[f"ANTONI answer {r['question_number']}"] = r["answer"].strip()
        if r.get("provenance"):
            metadata[f"ANTONI provenance {r['question_number']}"] = _provenance_text(r)
    return metadata
