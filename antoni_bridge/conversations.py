"""Conversations kept between commands, one per slide, region or features file, so that
`antoni-bridge ask --follow-up` continues where the last question left off.

Stored as small JSON files written to a temporary name and renamed: an interrupted write keeps the
previous conversation.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from antoni_bridge import paths
from antoni_bridge.files import write_atomically

Turn = dict[str, str]


def conversation_key(source: Path, region_key: str = "") -> str:
    """The slide (or features file) and region a conversation is about."""
    text = f"{source.resolve()}\n{region_key}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def load(key: str) -> list[Turn]:
    """The stored conversation (empty when there is none, or it is unreadable)."""
    try:
        turns = json.loads((paths.conversations_dir() / f"{key}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    valid = isinstance(turns, list) and all(
        isinstance(t, dict) and isinstance(t.get("role"), str) and isinstance(t.get("content"), str) for t in turns
    )
    return turns if valid else []


def save(key: str, turns: list[Turn]) -> None:
    write_atomically(paths.conversations_dir() / f"{key}.json", json.dumps(turns, ensure_ascii=False, indent=1))
