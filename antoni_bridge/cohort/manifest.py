"""The run's manifest: one row per slide (slide, fingerprint, status, tiles, seconds, error), as Parquet.

It is the record of a run, rewritten atomically now and then and at the end; the feature files themselves
decide what a rerun skips (a file is either whole or absent), so a manifest lost to a crash costs nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from antoni_bridge.files import replacing

MANIFEST = "manifest.parquet"
DONE, FAILED = "done", "failed"


@dataclass
class SlideRecord:
    slide: str  # the slide's path
    name: str  # its feature file is NAME.h5 in the output folder
    fingerprint: str | None
    status: str  # done or failed
    tiles: int | None
    seconds: float
    error: str | None
    case: str | None = None
    region: str | None = None  # GeoJSON text of the region embedded, if not the whole slide


def write_manifest(folder: Path, records: list[SlideRecord]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = folder / MANIFEST
    table = pa.Table.from_pylist([asdict(r) for r in records], schema=_schema(pa))
    with replacing(path) as tmp:
        pq.write_table(table, tmp)
    return path


def read_manifest(folder: Path) -> list[dict[str, Any]]:
    """The rows of an earlier run's manifest (none when there is no readable one)."""
    import pyarrow.parquet as pq

    try:
        return pq.read_table(folder / MANIFEST).to_pylist()
    except (OSError, ValueError):  # absent or damaged: the feature files are the truth
        return []


def _schema(pa: Any) -> Any:
    text, number = pa.string(), pa.int64()
    return pa.schema(
        [
            ("slide", text),
            ("name", text),
            ("fingerprint", text),
            ("status", text),
            ("tiles", number),
            ("seconds", pa.float64()),
            ("error", text),
            ("case", text),
            ("region", text),
        ]
    )
