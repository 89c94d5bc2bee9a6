"""Conversations kept per slide and region, and their export as Markdown and JSON.

Only exchanges that ended with an answer go back to the daemon as context: a cancelled or failed
question stays in the transcript the user sees and exports, but the model never sees half an answer.
Prism's report drafts stand in the transcript too, marked as Prism's, and are never sent to ANTONI as
its own words.
No Qt here, so the record of what was asked can be tested and reused without a display.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from antoni_bridge.demo_assets import DEMO_NOTE
from antoni_bridge.files import write_atomically
from antoni_bridge.slides.regions import Region

ANTONI, PRISM = "ANTONI", "Prism"
PRISM_LABEL = "Draft by Prism (not ANTONI)"


@dataclass
class Exchange:
    """One question and what came back: `state` is asking, done, cancelled or error; `speaker` who
    answered (ANTONI, or Prism for a report draft)."""

    question: str
    answer: str = ""
    state: str = "asking"
    note: str = ""  # the error message, or timings once done
    demo: bool = False
    asked_at: float = field(default_factory=time.time)
    provenance: dict[str, Any] = field(default_factory=dict)  # of an answer: weights, decoding, stop reason, ...
    speaker: str = ANTONI
    reliance: dict[str, Any] | None = None  # how much the answer depends on the slide (ask's done)
    evidence: dict[str, Any] | None = None  # the `explain` job's done for this answer, once asked for

    def to_json(self) -> dict[str, Any]:
        """The record; of an evidence map its figures only (the per-tile values belong in a map file)."""
        record = {name: value for name, value in vars(self).items() if name != "evidence"}
        if self.evidence is not None:
            figures = ("method", "tiles", "groups", "tile_size", "faithfulness", "refined")
            record["evidence"] = {name: self.evidence.get(name) for name in figures}
        return record


@dataclass
class Conversation:
    """Everything asked about one slide, or one region of it."""

    slide: Path
    region: Region | None = None
    exchanges: list[Exchange] = field(default_factory=list)
    exported: int = 0  # exchanges when it was last exported: more are lost when the window closes

    @property
    def unsaved(self) -> bool:
        return len(self.exchanges) > self.exported

    @property
    def title(self) -> str:
        where = f"region {self.region.name}" if self.region and self.region.name else "the whole slide"
        return f"{self.slide.name}, {where}"

    @property
    def busy(self) -> bool:
        return bool(self.exchanges) and self.exchanges[-1].state == "asking"

    def turns_for(self, question: str) -> list[dict[str, str]]:
        """The conversation the daemon gets: finished exchanges, then the new question."""
        turns: list[dict[str, str]] = []
        for exchange in self.exchanges:
            if exchange.state == "done" and exchange.speaker == ANTONI:
                turns.append({"role": "user", "content": exchange.question})
                turns.append({"role": "assistant", "content": exchange.answer})
        return [*turns, {"role": "user", "content": question}]

    def turns_until(self, exchange: Exchange) -> list[dict[str, str]]:
        """The conversation as it stood when `exchange` was asked (for explaining its answer)."""
        earlier = Conversation(self.slide, self.region, self.exchanges[: self.exchanges.index(exchange)])
        return earlier.turns_for(exchange.question)

    def to_json(self) -> dict[str, Any]:
        return {
            "slide": str(self.slide),
            "region": None if self.region is None else {"name": self.region.name, "geometry": self.region.to_geojson()},
            "exchanges": [exchange.to_json() for exchange in self.exchanges],
        }

    def to_markdown(self) -> str:
        lines = [f"# {self.title}", "", f"Slide: `{self.slide}`"]
        if self.region is not None:
            x0, y0, x1, y1 = self.region.bounds
            lines.append(f"Region bounds (level-0 px): x {x0:.0f}-{x1:.0f}, y {y0:.0f}-{y1:.0f}")
        for exchange in self.exchanges:
            asked = time.strftime("%Y-%m-%d %H:%M", time.localtime(exchange.asked_at))
            answer = exchange.answer or "(no answer)"
            if exchange.speaker != ANTONI:
                answer = f"**{PRISM_LABEL}:** {answer}"
            lines += ["", f"## Q ({asked}): {exchange.question}", "", answer]
            if exchange.reliance:
                lines += ["", reliance_text(exchange.reliance)]
            if exchange.state != "done" or exchange.demo or exchange.note:
                lines += ["", f"*{describe_end(exchange)}*"]
            if exchange.provenance:
                lines += ["", f"Provenance: `{json.dumps(exchange.provenance, sort_keys=True)}`"]
        return "\n".join(lines) + "\n"


def describe_end(exchange: Exchange) -> str:
    """How an exchange ended, in words, with the demo-weights warning where it applies."""
    words = {"asking": "still being answered", "done": "answered", "cancelled": "cancelled", "error": "failed"}
    text = words[exchange.state] + (f": {exchange.note}" if exchange.note else "")
    return text + (f" {DEMO_NOTE}" if exchange.demo else "")


def reliance_text(reliance: dict[str, Any]) -> str:
    """The reliance figure as shown next to an answer."""
    flag = "; flagged: this answer does not depend on the image" if reliance.get("flagged") else ""
    return f"Image reliance {reliance['score']:.2f}{flag}"


def export(conversation: Conversation, path: Path) -> None:
    """Markdown for `.md`, JSON for anything else (`.json`)."""
    if path.suffix.lower() in (".md", ".markdown"):
        write_atomically(path, conversation.to_markdown())
    else:
        write_atomically(path, json.dumps(conversation.to_json(), indent=2, ensure_ascii=False) + "\n")
    conversation.exported = len(conversation.exchanges)
