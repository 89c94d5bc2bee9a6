"""The daemon's log: a rotating file (always), and the terminal too with --verbose.

Anyone who can reach the port can make the daemon refuse messages, so refusals (records logged with
`extra=REFUSAL`) are rate-limited and summarised, and every record is cut to a bounded length: a flood
must not rotate the start-up lines and the errors out of the log, nor fill the disk.
"""

from __future__ import annotations

import logging
import sys
import time
from logging.handlers import RotatingFileHandler
from pathlib import Path

from antoni_bridge import platforms

LOG_BYTES = 5 * 2**20
LOG_BACKUPS = 3
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
MAX_RECORD_CHARS = 2000  # a record longer than this (a 30 MB path, say) is cut
REFUSALS_PER_WINDOW = 20
REFUSAL_WINDOW_S = 60.0
REFUSAL = {"refusal": True}  # `extra=` for records a client without the key can cause


def shorten(text: str, limit: int = MAX_RECORD_CHARS) -> str:
    """`text`, cut to `limit` characters with a note of how much was left out."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit:,} characters cut)"


class Bounded(logging.Filter):
    """Cuts every record to MAX_RECORD_CHARS; passes at most REFUSALS_PER_WINDOW refusals a window and
    says how many it held back on the next refusal it passes."""

    def __init__(self) -> None:
        super().__init__()
        self.window_start, self.passed, self.held_back = time.monotonic(), 0, 0

    def filter(self, record: logging.LogRecord) -> bool:
        if hasattr(record, "bounded"):  # seen by another handler already: the same verdict
            return record.bounded
        record.bounded = self._bound(record)
        return record.bounded

    def _bound(self, record: logging.LogRecord) -> bool:
        if getattr(record, "refusal", False) and not self._admit():
            return False
        message = shorten(record.getMessage())
        if getattr(record, "refusal", False) and self.held_back:
            message = f"{message} ({self.held_back:,} more refusals were not logged)"
            self.held_back = 0
        record.msg, record.args = message, None
        return True

    def _admit(self) -> bool:
        now = time.monotonic()
        if now - self.window_start > REFUSAL_WINDOW_S:
            self.window_start, self.passed = now, 0
        if self.passed >= REFUSALS_PER_WINDOW:
            self.held_back += 1
            return False
        self.passed += 1
        return True


def setup_logging(log_file: Path, verbose: bool = False) -> None:
    """INFO and up to `log_file` (5 MB, 3 old files kept, the user's alone); with `verbose`, DEBUG to the
    file and stderr."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handlers: list[logging.Handler] = [
        RotatingFileHandler(log_file, maxBytes=LOG_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8")
    ]
    for old in log_file.parent.glob(f"{log_file.name}*"):  # written before the daemon's files became private
        platforms.make_private(old)
    if verbose:
        handlers.append(logging.StreamHandler(sys.stderr))
    logger = logging.getLogger("antoni_bridge")
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    bounded = Bounded()
    for handler in handlers:
        handler.setFormatter(logging.Formatter(FORMAT))
        handler.addFilter(bounded)  # on the handlers: a logger's filter misses its children's records
        logger.addHandler(handler)
