"""Similar slides: every slide or region embedded here, indexed by its slide embedding (row 0 of the latents).

The index lives with the feature cache, one folder per slide encoder (embeddings of different encoders
are not comparable): unit-length rows in `vectors.f16` and `vectors.f32`, memory-mapped; one JSON line
per row in `entries.jsonl` (slide, region, fingerprint, thumbnail), with lines that drop rows; and
`manifest.json`, written atomically, which says how many rows and entry bytes are valid. Adding a slide
appends to the three files past what the manifest counts and then replaces the manifest, so a crash
leaves the old index (the half-written tail is cut off by the next append) and 100,000 rows are never
rewritten to add one.
Forgetting drops rows by a line; when half the rows are dropped, the folder is rewritten whole.

Search is exact: one float16 matrix-vector product over all rows (torch's CPU kernel; numpy has no fast
float16 one) picks candidates, float32 ranks them (benchmarks/similar_index.py, docs/benchmarks.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np

from antoni_bridge.engine.latents import Latents
from antoni_bridge.engine.sources import SlideRoots, SlideSource, Source
from antoni_bridge.errors import BridgeError
from antoni_bridge.files import replacing, replacing_folder, write_atomically

FOLDER = "similar"
THUMBNAIL_SIDE = 256
FORMAT = 1
COARSE_ERROR = 1e-3  # bounds |float16 score - float32 score| of unit vectors (measured: at most 4e-4)


@dataclass(frozen=True)
class Entry:
    """One indexed slide or region."""

    slide: str  # absolute path
    region: dict[str, Any] | None  # GeoJSON geometry in level-0 pixels, or None for the whole slide
    region_key: str  # the region's canonical text (Region.key(), as the feature cache's keys), "" for none
    fingerprint: str  # the slide's content fingerprint
    thumbnail: str | None  # absolute path of a small PNG, or None

    @property
    def key(self) -> tuple[str, str]:
        return self.slide, self.region_key


@dataclass(frozen=True)
class Match:
    entry: Entry
    similarity: float  # cosine


class SimilarIndex:
    """The index of one embedding space (one slide encoder) in `folder`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.manifest_text: str | None = None
        self.entries: list[Entry] = []
        self.rows: dict[tuple[str, str], int] = {}  # the live row of each slide and region
        self.alive = np.zeros(0, dtype=bool)
        self.coarse: np.ndarray | None = None  # (rows, dim) float16, memory-mapped (copy-on-write: torch reads it)
        self.exact: np.ndarray | None = None  # (rows, dim) float32, memory-mapped, read row by row
        self.dim = 0
        self.entry_bytes = 0

    # -------------------------------------------------------------------------------------- reading

    @property
    def manifest(self) -> Path:
        return self.folder / "manifest.json"

    def refresh(self) -> None:
        """Read the index again when another writer (a `--local` run) replaced the manifest."""
        try:
            text = self.manifest.read_text(encoding="utf-8")
        except FileNotFoundError:
            text = None
        if text != self.manifest_text:
            self._load(text)

    def _load(self, text: str | None) -> None:
        facts = json.loads(text) if text else {"rows": 0, "dim": 0, "entry_bytes": 0}
        data = b""
        if text:
            with (self.folder / "entries.jsonl").open("rb") as fh:
                data = fh.read(facts["entry_bytes"])
        self.entries, self.alive, self.manifest_text, self.rows = [], np.zeros(0, dtype=bool), None, {}
        self._took(text, facts, data)

    def _took(self, text: str | None, facts: dict[str, Any], lines: bytes) -> None:
        """Take in what was appended (`lines` of entries.jsonl) and the manifest now on disk."""
        dropped, added = [], 0
        for line in lines.splitlines():
            record = json.loads(line)
            if "drop" in record:
                dropped.extend(record["drop"])
            else:
                self.entries.append(Entry(**record))
                added += 1
        self.alive = np.concatenate([self.alive, np.ones(len(self.entries) - len(self.alive), dtype=bool)])
        self.alive[dropped] = False
        for row in range(len(self.entries) - added, len(self.entries)):
            self.rows[self.entries[row].key] = row
        for row in dropped:
            if self.rows.get(self.entries[row].key) == row:
                del self.rows[self.entries[row].key]
        self.manifest_text, self.dim, self.entry_bytes = text, facts["dim"], facts["entry_bytes"]
        rows, self.coarse, self.exact = facts["rows"], None, None
        if rows:
            self.coarse = np.memmap(self.folder / "vectors.f16", np.float16, "c", shape=(rows, self.dim))
            self.exact = np.memmap(self.folder / "vectors.f32", np.float32, "r", shape=(rows, self.dim))

    def __len__(self) -> int:
        self.refresh()
        return int(self.alive.sum())

    def holds(self, slide: str, region_key: str, fingerprint: str) -> bool:
        """Whether this slide and region are indexed with this content."""
        self.refresh()
        row = self.rows.get((slide, region_key))
        return row is not None and self.entries[row].fingerprint == fingerprint

    # -------------------------------------------------------------------------------------- writing

    def add(self, entries: Sequence[Entry], embeddings: np.ndarray) -> None:
        """Index slides or regions (each replacing an entry of the same slide and region) in one append."""
        self.refresh()
        vectors = unit(embeddings)
        if vectors.shape != (len(entries), self.dim or vectors.shape[1]):
            raise BridgeError(
                f"{vectors.shape} slide embeddings cannot join an index of {self.dim}-wide ones for "
                f"{len(entries)} entries.",
                "embeddings of one slide encoder share an index; this is a bug to report",
            )
        rows, latest, replaced = len(self.entries), dict(self.rows), []
        for offset, entry in enumerate(entries):
            if entry.key in latest:
                replaced.append(latest[entry.key])
            latest[entry.key] = rows + offset
        lines = [entry.__dict__ for entry in entries] + ([{"drop": replaced}] if replaced else [])
        self.folder.mkdir(parents=True, exist_ok=True)
        width = vectors.shape[1]
        _append(self.folder / "vectors.f16", rows * width * 2, vectors.astype(np.float16).tobytes())
        _append(self.folder / "vectors.f32", rows * width * 4, vectors.tobytes())
        text = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
        _append(self.folder / "entries.jsonl", self.entry_bytes, text)
        facts = {
            "format": FORMAT,
            "rows": rows + len(entries),
            "dim": width,
            "entry_bytes": self.entry_bytes + len(text),
        }
        self._commit(facts, text)

    def _commit(self, facts: dict[str, Any], appended: bytes) -> None:
        """Replace the manifest (the moment the appended lines count) and take them in without reading
        the index again."""
        text = json.dumps(facts)
        write_atomically(self.manifest, text)
        self._took(text, facts, appended)

    def drop(self, fingerprint: str) -> int:
        """Drop every entry of one slide's content (each copy and region); how many went."""
        self.refresh()
        rows = [row for row, entry in enumerate(self.entries) if self.alive[row] and entry.fingerprint == fingerprint]
        if not rows:
            return 0
        if 2 * (int((~self.alive).sum()) + len(rows)) > len(self.entries):
            self._compact(set(rows))
            return len(rows)
        text = json.dumps({"drop": rows}).encode() + b"\n"
        _append(self.folder / "entries.jsonl", self.entry_bytes, text)
        facts = json.loads(self.manifest_text or "{}") | {"entry_bytes": self.entry_bytes + len(text)}
        self._commit(facts, text)
        return len(rows)

    def _compact(self, doomed: set[int]) -> None:
        """Write the rows that stay into a new folder and put it in place whole."""
        keep = [row for row in range(len(self.entries)) if self.alive[row] and row not in doomed]
        with replacing_folder(self.folder) as tmp:
            tmp.mkdir(parents=True)
            text = b"".join(json.dumps(self.entries[row].__dict__).encode() + b"\n" for row in keep)
            for name, vectors in (("vectors.f16", self.coarse), ("vectors.f32", self.exact)):
                with (tmp / name).open("wb") as fh:
                    for start in range(0, len(keep), 8192) if vectors is not None else []:
                        fh.write(np.ascontiguousarray(vectors[keep[start : start + 8192]]).tobytes())
            (tmp / "entries.jsonl").write_bytes(text)
            facts = {"format": FORMAT, "rows": len(keep), "dim": self.dim, "entry_bytes": len(text)}
            (tmp / "manifest.json").write_text(json.dumps(facts), encoding="utf-8")
        self.manifest_text = None  # read again next time
        self.refresh()

    # -------------------------------------------------------------------------------------- searching

    def search(self, query: np.ndarray, top: int, keep: Callable[[Entry], bool] = lambda entry: True) -> list[Match]:
        """The `top` rows closest to `query` by cosine that `keep` accepts, best first.

        Exact: float16 scores of every row pick the candidates, every row that could be among the `top`
        within float16's error (COARSE_ERROR) is scored again in float32, and those scores rank."""
        self.refresh()
        if self.coarse is None or self.exact is None:
            return []
        query = unit(query)
        coarse = coarse_scores(self.coarse, query)
        coarse[~self.alive] = -np.inf
        kept: list[int] = []
        for row in _best_first(coarse, int(self.alive.sum())):
            if len(kept) >= top and coarse[row] < coarse[kept[top - 1]] - 2 * COARSE_ERROR:
                break
            if keep(self.entries[row]):
                kept.append(row)
        exact = self.exact[sorted(kept)] @ query if kept else np.zeros(0, dtype=np.float32)
        ranked = sorted(zip(exact.tolist(), sorted(kept), strict=True), key=lambda pair: -pair[0])[:top]
        return [Match(self.entries[row], min(score, 1.0)) for score, row in ranked]


class SimilarSlides:
    """The indexes under a feature cache (one per slide encoder) and their thumbnails."""

    def __init__(self, cache_dir: Path) -> None:
        self.root = Path(cache_dir).absolute() / FOLDER  # thumbnails are reported by absolute path
        self.spaces: dict[str, SimilarIndex] = {}

    def space(self, encoder_identity: str) -> SimilarIndex:
        name = hashlib.sha256(encoder_identity.encode()).hexdigest()[:16]
        if name not in self.spaces:
            self.spaces[name] = SimilarIndex(self.root / name)
        return self.spaces[name]

    def thumbnail_path(self, fingerprint: str, region_key: str) -> Path:
        name = hashlib.sha256(f"{fingerprint}:{region_key}".encode()).hexdigest()[:24]
        return self.root / "thumbnails" / f"{name}.png"

    def forget(self, fingerprint: str | None) -> None:
        """Drop one slide's content from every index (its thumbnails too), or everything."""
        if fingerprint is None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.spaces.clear()
            return
        for folder in self.root.iterdir() if self.root.is_dir() else []:
            if (folder / "manifest.json").is_file():
                index = self.space_at(folder)
                for row, entry in enumerate(index.entries):
                    if entry.fingerprint == fingerprint and index.alive[row] and entry.thumbnail:
                        Path(entry.thumbnail).unlink(missing_ok=True)
                index.drop(fingerprint)

    def space_at(self, folder: Path) -> SimilarIndex:
        index = self.spaces.setdefault(folder.name, SimilarIndex(folder))
        index.refresh()
        return index


# ------------------------------------------------------------------------------------------ helpers


def unit(vectors: Any) -> np.ndarray:
    """A float32 copy of a vector (or of each row) scaled to length 1 (a zero vector stays zero)."""
    values = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(values, axis=-1, keepdims=True)
    return values / np.where(norms > 0, norms, 1.0)


def coarse_scores(vectors: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Rows (unit, float16) times a unit query, as float32: torch's float16 kernel reads half the bytes
    float32 would (numpy's float16 product is 20 times slower than either)."""
    import torch

    rows = torch.from_numpy(vectors)
    return (rows @ torch.from_numpy(query.astype(np.float16))).float().numpy()


def _best_first(scores: np.ndarray, candidates: int) -> Iterable[int]:
    """Row numbers by falling score: a partial sort of a few first, everything sorted only when needed."""
    first = min(candidates, 64)
    if first == 0:
        return
    head = np.argpartition(-scores, first - 1)[:first]
    yield from head[np.argsort(-scores[head], kind="stable")].tolist()
    if candidates > first:
        rest = np.argsort(-scores, kind="stable")[first:candidates]
        yield from rest.tolist()


def _append(path: Path, valid_bytes: int, data: bytes) -> None:
    """Write `data` after the first `valid_bytes` of `path` (what a crashed append left there is cut), synced."""
    with path.open("r+b" if path.exists() else "w+b") as fh:
        fh.truncate(valid_bytes)
        fh.seek(valid_bytes)
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def write_thumbnail(source: SlideSource, out: Path) -> Path | None:
    """A small PNG of the slide (its overview) or of the region (its field of view), written atomically;
    None for a region too small to look at."""
    from PIL import Image

    from antoni_bridge.slides.field_of_view import read_field_of_view
    from antoni_bridge.slides.overview import thumbnail
    from antoni_bridge.slides.reader import Slide

    with Slide(source.path, source.slide_mpp) as slide:
        if source.region is None:
            image = thumbnail(slide, THUMBNAIL_SIDE)[0]
        else:
            try:
                image = Image.fromarray(read_field_of_view(slide, source.region, THUMBNAIL_SIDE))
            except BridgeError:
                return None
    with replacing(out) as tmp:
        image.save(tmp, format="PNG")
    return out


def index_latents(slides: SimilarSlides, encoder: str, source: SlideSource, latents: Latents) -> None:
    """Index a slide or region just embedded (or found in the cache) unless it is indexed with this content."""
    region = json.loads(json.dumps(source.region.to_geojson())) if source.region else None  # tuples to lists
    key = source.region.key() if source.region else ""
    index, fingerprint = slides.space(encoder), str(latents.fingerprint)
    if index.holds(str(source.path), key, fingerprint):
        return
    thumbnail = write_thumbnail(source, slides.thumbnail_path(fingerprint, key))
    entry = Entry(str(source.path), region, key, fingerprint, str(thumbnail) if thumbnail else None)
    index.add([entry], latents.values[:1].float().numpy())


def find_similar(
    index: SimilarIndex, source: Source, latents: Latents, top: int, within: Callable[[Entry], bool] | None
) -> list[dict[str, Any]]:
    """The `top` indexed slides or regions closest to the source's slide embedding, as `similar` reports
    them: not the source itself, not slides gone from disk, and only those `within` accepts."""
    own = None
    if isinstance(source, SlideSource):
        own = (str(source.path), source.region.key() if source.region else "")

    def keep(entry: Entry) -> bool:
        return entry.key != own and Path(entry.slide).is_file() and (within is None or within(entry))

    return [
        {
            "slide": match.entry.slide,
            "region": match.entry.region,
            "similarity": match.similarity,
            "thumbnail": match.entry.thumbnail
            if match.entry.thumbnail and Path(match.entry.thumbnail).is_file()
            else None,
            "fingerprint": match.entry.fingerprint,
        }
        for match in index.search(latents.values[0].float().numpy(), top, keep)
    ]


def within_filter(within: str, roots: SlideRoots) -> Callable[[Entry], bool]:
    """Results under a folder, or among a QuPath project's images (its .qpproj file)."""
    path = Path(within).expanduser()
    if not path.is_absolute():
        raise BridgeError(f"'within' must be an absolute path, not {within[:200]!r}.", "give the folder's full path")
    if path.is_dir():
        folder = path.resolve()
        return lambda entry: Path(entry.slide).is_relative_to(folder)
    if path.suffix == ".qpproj" and path.is_file():
        images = {str(image) for image in project_slides(roots.allowed(path))}
        return lambda entry: entry.slide in images
    raise BridgeError(
        f"{within} is neither a folder nor a QuPath project file.",
        "give a folder of slides, or a project's project.qpproj",
    )


def project_slides(project: Path) -> set[Path]:
    """The image files of a QuPath project (.qpproj), read from its JSON: each image's server builder
    names its file as a file: URI (nested builders, e.g. a rotated image, hold the original's)."""
    try:
        data = json.loads(project.read_text(encoding="utf-8"))
        images = data["images"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BridgeError(f"{project} cannot be read as a QuPath project ({exc}).", "give a project.qpproj") from None
    return {Path(path).resolve() for image in images for path in _file_uris(image.get("serverBuilder"))}


def _file_uris(builder: Any) -> Iterable[str]:
    if isinstance(builder, dict):
        uri = builder.get("uri")
        if isinstance(uri, str) and uri.startswith("file:"):
            yield _path_of(uri)
        for value in builder.values():
            yield from _file_uris(value)
    elif isinstance(builder, list):
        for value in builder:
            yield from _file_uris(value)


def _path_of(uri: str) -> str:
    """file:/C:/x.svs (QuPath on Windows) -> C:/x.svs; file:/data/x.svs -> /data/x.svs."""
    path = unquote(urlparse(uri).path)
    return path[1:] if len(path) > 2 and path[0] == "/" and path[2] == ":" else path
