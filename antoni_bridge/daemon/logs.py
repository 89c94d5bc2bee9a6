"""The daemon's log: a rotating file (always), and the terminal too with --verbose."""

from __future__ import annotations

import logging
import sys
from logging.handlers import RotatingFileHandler
from pathlib import Path

LOG_BYTES = 5 * 2**20
LOG_BACKUPS = 3
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(log_file: Path, verbose: bool = False) -> None:
    """INFO and up to `log_file` (5 MB, 3 old files kept); with `verbose`, DEBUG to the file and stderr."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handlers: list[logging.Handler] = [RotatingFileHandler(log_file, maxBytes=LOG_BYTES, backupCount=LOG_BACKUPS)]
    if verbose:
        handlers.append(logging.StreamHandler(sys.stderr))
    logger = logging.getLogger("antoni_bridge")
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    for handler in handlers:
        handler.setFormatter(logging.Formatter(FORMAT))
        logger.addHandler(handler)
