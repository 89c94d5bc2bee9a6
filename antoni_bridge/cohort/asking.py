"""`cohort ask`: every question about every slide (and annotation), the engine in a pool of model actors.

Each actor holds one `Engine` (ANTONI-Alpha and the encoders, loaded once); it gets one slide at a time
with all its targets and questions, so the slide's latents are computed (or read) once and the model's
KV prefix is reused between questions. Over the output folder of `cohort embed`, the latents come from
its feature files and no slide is opened. A slide whose worker died, also on retry, is recorded as failed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from antoni_bridge.cohort.embedding import failure_reason, started
from antoni_bridge.cohort.manifest import DONE, FAILED, MANIFEST, read_manifest
from antoni_bridge.cohort.sources import CohortSlide, Target, read_cohort
from antoni_bridge.errors import BridgeError
from antoni_bridge.files import replacing

IMAGE = Target("image", "image")
EXTRA_COLUMNS = ("zero_shot", "zero_shot_best", "zero_shot_error", "evidence_map", "evidence_gap", "evidence_error")


@dataclass(frozen=True)
class Extras:
    """What is asked besides the answers: evidence maps (written into this folder), zero-shot labels."""

    evidence: Path | None = None
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class AskItem:
    """One slide and everything asked about it."""

    slide: CohortSlide
    targets: tuple[Target, ...]
    features: Path | None = None  # its feature file from `cohort embed` (whole-slide questions read it)


def ask_items(source: Path) -> list[AskItem]:
    """The slides of SOURCE, or of a `cohort embed` output folder (its feature files)."""
    if (source / MANIFEST).is_file():
        return _embedded_items(source)
    return [AskItem(s, (_whole(s), *s.annotations)) for s in read_cohort(source)]


def _whole(slide: CohortSlide) -> Target:
    """What "the slide" is: the region its manifest row names, if any, else the whole image."""
    return Target("region", "region", slide.region) if slide.region else IMAGE


def _embedded_items(folder: Path) -> list[AskItem]:
    items = []
    for row in read_manifest(folder):
        slide = CohortSlide(Path(row["slide"]), row["name"], case=row.get("case"))
        if row["status"] != DONE:
            slide = CohortSlide(slide.path, slide.name, case=slide.case, problem=f"Not embedded: {row['error']}")
        items.append(AskItem(slide, (IMAGE,), folder / f"{row['name']}.h5"))
    if not items:
        raise BridgeError(f"The manifest in {folder} lists no slides.", "run `antoni-bridge cohort embed` again")
    return items


class AskWorker:
    """One engine: the models loaded once, then slide after slide."""

    def __init__(self, choice: Any, cache_dir: Path | None, settings: Any) -> None:  # ModelChoice, EngineSettings
        from antoni_bridge.cli import quiet_libraries
        from antoni_bridge.engine import Engine

        quiet_libraries()  # as the command does: known third-party notices stay out of the run's output
        self.engine = Engine(choice, cache_dir, settings=settings)
        self.problem: BridgeError | None = None
        try:
            self.engine.load()
        except BridgeError as exc:  # kept for `check`: an actor whose start fails is only "dead" to Ray
            self.problem = exc

    def check(self) -> None:
        """Raise why the models did not load, if they did not."""
        if self.problem is not None:
            raise self.problem

    def ask(self, item: AskItem, questions: list[str], options: Any, extras: Extras) -> list[dict[str, Any]]:
        """A row per target and question: the answer with its provenance (and evidence map, zero-shot
        probabilities when asked), or why there is none."""
        rows = []
        for target in item.targets:
            start = time.perf_counter()
            try:
                source = self._source(item, target)
            except BridgeError as exc:
                rows += [row(item, target, n, q, 0.0, error=str(exc)) for n, q in enumerate(questions, start=1)]
                continue
            scored = self._zero_shot(source, extras.labels)
            for number, question in enumerate(questions, start=1):
                conversation = [{"role": "user", "content": question}]
                try:
                    answer = self.engine.ask(source, conversation, options)
                except BridgeError as exc:
                    rows.append(row(item, target, number, question, time.perf_counter() - start, error=str(exc)))
                    continue
                mapped = self._evidence(extras.evidence, item, target, number, source, conversation, answer.text)
                seconds = time.perf_counter() - start
                rows.append(row(item, target, number, question, seconds, answer, extra={**scored, **mapped}))
                start = time.perf_counter()
        return rows

    def _zero_shot(self, source: Any, labels: tuple[str, ...]) -> dict[str, Any]:
        """Prism's zero-shot probabilities over the labels, once per target (columns of every row of it)."""
        if not labels:
            return {}
        try:
            scored = self.engine.zero_shot(source, list(labels))
        except BridgeError as exc:
            return {"zero_shot_error": str(exc)}
        best = max(zip(scored.probabilities, scored.labels, strict=True))[1]
        return {
            "zero_shot": json.dumps(dict(zip(scored.labels, scored.probabilities, strict=True))),
            "zero_shot_best": best,
        }

    def _evidence(
        self, folder: Path | None, item: AskItem, target: Target, number: int, source: Any, conversation, answer: str
    ) -> dict[str, Any]:
        """The answer's evidence map as QuPath GeoJSON in FOLDER (when asked), its faithfulness gap and the
        answer's image reliance."""
        from dataclasses import asdict

        from antoni_bridge import maps

        if folder is None or not answer.strip():
            return {}
        try:
            explained = asdict(self.engine.explain(source, conversation, answer))
            path = folder / f"{item.slide.name}-{_safe(target.id)}-q{number}.geojson"
            maps.write_geojson(maps.evidence_map(explained), path)
        except BridgeError as exc:
            return {"evidence_error": str(exc)}
        return {"evidence_map": str(path), "evidence_gap": explained["faithfulness"]["gap"]}

    def _source(self, item: AskItem, target: Target) -> Any:
        from antoni_bridge.engine import FeaturesSource, SlideSource
        from antoni_bridge.slides.regions import Region

        if item.features is not None and target.region is None:
            return FeaturesSource(item.features)
        region = Region.from_geojson_dict(target.region, target.label) if target.region else None
        return SlideSource(item.slide.path, region)


def row(
    item: AskItem,
    target: Target,
    number: int,
    question: str,
    seconds: float,
    answer: Any = None,
    error: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One answer as saved: what was asked of what, the answer, its reliance on the slide, evidence and
    zero-shot columns (empty unless asked), and its full provenance."""
    provenance = dict(answer.provenance) if answer is not None else {}
    reliance = (answer.reliance if answer is not None else None) or {}
    decoding = provenance.pop("decoding", None)
    return {
        "slide": str(item.slide.path),
        "name": item.slide.name,
        "case": item.slide.case,
        "entry_id": item.slide.entry_id,
        "target": target.id,
        "label": target.label,
        "question_number": number,
        "question": question,
        "status": DONE if answer is not None else FAILED,
        "answer": answer.text if answer is not None else None,
        "error": error,
        "stop_reason": answer.stop_reason if answer is not None else None,
        "tiles": answer.tiles if answer is not None else None,
        "latents_from": answer.latents_from if answer is not None else None,
        "seconds": round(seconds, 3),
        "reliance_score": reliance.get("score"),
        "reliance_flagged": reliance.get("flagged"),
        **{column: (extra or {}).get(column) for column in EXTRA_COLUMNS},
        **{key: _text(provenance.get(key)) for key in PROVENANCE},
        "demo": provenance.get("demo"),
        "decoding": json.dumps(decoding) if decoding is not None else None,
        "versions": json.dumps(versions()),
    }


PROVENANCE = ("weights", "weights_revision", "weights_sha256", "llm", "tile_encoder", "slide_encoder")


def _safe(name: str) -> str:
    """A target id as part of a file name (QuPath ids are UUIDs; anything else loses its odd characters)."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:80]


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def versions() -> dict[str, str]:
    """The software an answer came from, besides the weights."""
    from importlib.metadata import PackageNotFoundError, version

    from antoni_bridge import __version__

    found = {"antoni_bridge": __version__}
    for package in ("torch", "transformers", "peft", "ray"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "absent"
    return found


def failed_rows(item: AskItem, questions: list[str], reason: str) -> list[dict[str, Any]]:
    return [row(item, t, n, q, 0.0, error=reason) for t in item.targets for n, q in enumerate(questions, start=1)]


@dataclass
class AskSummary:
    rows: list[dict[str, Any]]
    slides: int
    seconds: float
    workers: int

    @property
    def failed(self) -> int:
        return sum(r["status"] == FAILED for r in self.rows)


def ask_cohort(
    ray: Any,
    items: list[AskItem],
    questions: list[str],
    worker_args: tuple[Any, ...],  # (ModelChoice, cache_dir, EngineSettings)
    options: Any,  # GenerationOptions
    extras: Extras,
    workers: int,
    resources: dict[str, float],  # num_cpus / num_gpus of each model actor
    retries: int = 2,
    progress: Any = None,  # tqdm-like: update(1) per slide
) -> AskSummary:
    """Every item through the pool, at most two slides queued per worker (the rest wait here, as paths)."""
    start = time.perf_counter()
    actor = ray.remote(AskWorker).options(**resources, max_restarts=-1, max_task_retries=retries)
    pool = [actor.remote(*worker_args) for _ in range(workers)]
    started(ray, [worker.check.remote() for worker in pool], "model")
    queue, waiting, load, rows = list(reversed(items)), {}, [0] * workers, []
    while queue or waiting:
        while queue and min(load) < 2:
            item, worker = queue.pop(), load.index(min(load))
            if item.slide.problem:
                rows += failed_rows(item, questions, item.slide.problem)
                if progress is not None:
                    progress.update(1)
                continue
            waiting[pool[worker].ask.remote(item, questions, options, extras)] = (item, worker)
            load[worker] += 1
        if not waiting:
            continue
        ready, _ = ray.wait(list(waiting), num_returns=1)
        item, worker = waiting.pop(ready[0])
        load[worker] -= 1
        try:
            rows += ray.get(ready[0])
        except Exception as exc:  # Ray wraps the worker's exception, or says the worker died
            rows += failed_rows(item, questions, failure_reason(exc))
        if progress is not None:
            progress.update(1)
    return AskSummary(rows, len(items), time.perf_counter() - start, workers)


def write_answers(out: Path, rows: list[dict[str, Any]]) -> None:
    """Parquet, or CSV when OUT ends in .csv; atomically."""
    import pyarrow as pa

    table = pa.Table.from_pylist(rows) if rows else pa.table({})
    with replacing(out) as tmp:
        if out.suffix.lower() == ".csv":
            import pyarrow.csv as pacsv

            pacsv.write_csv(table, tmp)
        else:
            import pyarrow.parquet as pq

            pq.write_table(table, tmp)
