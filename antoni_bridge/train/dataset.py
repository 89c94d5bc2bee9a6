"""Users' own slides and conversations as training data: each slide through the slide-to-latents
pipeline (its feature cache makes a rerun skip finished slides), written in the HISTAI-Instruct layout.

Conversations file: JSON lines, one per slide:
    {"slide": "case1.svs", "key": "case1", "organ": "lung",
     "conversations": {"short_vqa": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}}
`slide` is relative to the slides folder; `key` defaults to the slide's stem.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from antoni_bridge.errors import BridgeError
from antoni_bridge.train.data import Case, is_trainable


@dataclass(frozen=True)
class Entry:
    slide: Path
    key: str
    organ: str
    conversations: dict[str, list[dict[str, str]]]


def read_entries(slides: Path, conversations: Path) -> list[Entry]:
    """Every line checked before any slide is embedded: a typo on line 900 fails in a second, not in an hour."""
    try:
        lines = conversations.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise BridgeError(f"No conversations file at {conversations}.", "give a JSON-lines file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BridgeError(f"{conversations.name} is not readable UTF-8 text ({exc}).", "save it as UTF-8") from exc
    entries, keys = [], set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        entry = _entry(slides, conversations.name, number, line)
        if entry.key in keys:
            raise BridgeError(f"{conversations.name} line {number}: the key {entry.key!r} repeats.", "keys are unique")
        keys.add(entry.key)
        entries.append(entry)
    if not entries:
        raise BridgeError(f"{conversations.name} holds no conversations.", "one JSON object per line")
    return entries


def _entry(slides: Path, name: str, number: int, line: str) -> Entry:
    where = f"{name} line {number}"
    try:
        item: Any = json.loads(line)
    except ValueError as exc:
        raise BridgeError(f"{where} is not JSON ({exc}).", "one JSON object per line") from exc
    if not isinstance(item, dict) or not isinstance(item.get("slide"), str):
        raise BridgeError(f"{where} has no `slide`.", 'e.g. {"slide": "case1.svs", "conversations": {...}}')
    slide = slides / item["slide"]
    if not slide.is_file():
        raise BridgeError(f"{where}: no slide at {slide}.", "paths are relative to --slides")
    conversations = item.get("conversations")
    if not isinstance(conversations, dict) or not any(is_trainable(k, v, None) for k, v in conversations.items()):
        raise BridgeError(
            f"{where} has no usable conversation.", "give user/assistant turns that alternate and end with an answer"
        )
    key = str(item.get("key") or slide.stem)
    if "/" in key or not key.strip():
        raise BridgeError(f"{where}: the key {key!r} is empty or holds '/'.", "HDF5 would read it as nested groups")
    return Entry(slide, key, str(item.get("organ", "")), conversations)


def build_dataset(entries: list[Entry], encoders: Any, cache: Any, on_slide: Any) -> list[Case]:
    """Latents for every entry (from the cache when embedded before); `on_slide(entry)` after each."""
    from antoni_bridge.encoders.pipeline import embed_slide
    from antoni_bridge.slides.planning import SlideRequest

    cases = []
    for entry in entries:
        result = embed_slide(SlideRequest(entry.slide), encoders, cache)
        cases.append(Case(entry.key, result.data.latents, entry.conversations, entry.organ))
        on_slide(entry)
    return cases
