"""`cohort embed` on Ray: plan in CPU tasks, read tile blocks in CPU tasks, encode in a pool of encoder
actors, write each slide's feature file atomically.

Each block of a slide is a read task whose pixels go, through Ray's object store, straight into an
encoder actor's call: the driver holds references only. It keeps at most `blocks_in_flight` blocks and
`slides_in_flight` slides under way, so memory stays bounded however large the cohort (Ray spills nothing
and no slide's tiles pile up). Ray retries a block whose worker died (the actor restarts, reloading the
encoders); when the retries run out, that slide is recorded as failed with the reason and the run goes on.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from antoni_bridge.cohort.manifest import DONE, FAILED, SlideRecord, read_manifest, write_manifest
from antoni_bridge.cohort.progress import CohortProgress
from antoni_bridge.cohort.runtime import cluster_resources
from antoni_bridge.cohort.sources import CohortSlide
from antoni_bridge.cohort.work import (
    EmbedSettings,
    Planned,
    TileWorker,
    block_grid,
    plan_slide,
    read_block,
    write_slide,
)
from antoni_bridge.errors import BridgeError

MANIFEST_EVERY_S = 30.0


@dataclass
class Summary:
    records: list[SlideRecord]
    embedded: int  # slides embedded by this run
    skipped: int  # slides whose feature files were already there
    failed: int
    tiles: int  # tiles embedded by this run
    seconds: float
    workers: int


@dataclass
class _Slide:
    """A slide under way."""

    slide: CohortSlide
    start: float
    planned: Planned | None = None
    blocks: list[tuple[int, int]] = field(default_factory=list)
    next_block: int = 0
    features: dict[int, Any] = field(default_factory=dict)  # block -> features ref (kept until written)
    pending: int = 0  # blocks submitted, not yet encoded
    ended: bool = False


def embed_cohort(
    ray: Any,
    slides: list[CohortSlide],
    out: Path,
    settings: EmbedSettings,
    workers: int | None = None,
    progress: CohortProgress | None = None,
    worker_class: type = TileWorker,
) -> Summary:
    """Embed every slide into OUT/NAME.h5 and record the run in OUT/manifest.parquet."""
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()  # the workers' start (models loading) counts in the run's rate
    try:
        run = _Run(ray, slides, out, settings, _worker_count(ray, settings, workers), progress, worker_class)
    except BaseException:
        if progress is not None:
            progress.close()
        raise
    return run.run(start)


def _worker_count(ray: Any, settings: EmbedSettings, workers: int | None) -> int:
    """Encoder actors: as asked, else one per GPU share (or one on the CPU); checked against the cluster."""
    cpus, gpus = cluster_resources(ray)
    if settings.device != "cpu":
        if gpus <= 0:
            raise BridgeError("--device cuda was asked for but the Ray cluster has no GPU.", "use --device cpu")
        count = workers or max(1, int(gpus / settings.gpus_per_worker))
    else:
        count = workers or 1
    if count < 1:
        raise BridgeError("--workers must be at least 1.", "leave it out for one per GPU (one on the CPU)")
    if count * settings.worker_cpus >= cpus:
        raise BridgeError(
            f"{count} encoder workers of {settings.worker_cpus:g} CPUs leave none of the {cpus:g} CPUs for reading.",
            "use fewer --workers, or give Ray more --cpus",
        )
    return count


class _Run:
    def __init__(
        self,
        ray: Any,
        slides: list[CohortSlide],
        out: Path,
        settings: EmbedSettings,
        workers: int,
        progress: CohortProgress | None,
        worker_class: type,
    ) -> None:
        self.ray, self.out, self.settings = ray, out, settings
        self.queue = deque(slides)
        self.progress = progress or CohortProgress(len(slides), enabled=False)
        self.previous = {row["name"]: row for row in read_manifest(out)}
        self.records: dict[str, SlideRecord] = {}
        self.counts = {"embedded": 0, "skipped": 0, "failed": 0, "tiles": 0}
        self.waiting: dict[Any, tuple[str, _Slide, int]] = {}  # ref -> (what, slide, block)
        self.under_way: list[_Slide] = []
        self.worker_class, self.worker_count = worker_class, workers
        self.workers: list[Any] = []  # started with the first slide to embed: a rerun loads no model
        self.load = [0] * workers  # blocks queued on each worker
        cpus, _ = cluster_resources(ray)
        readers = max(1, int(cpus - workers * settings.worker_cpus))
        self.blocks_in_flight = 2 * (workers + readers)
        self.slides_in_flight = workers + readers + 1
        self._tasks()

    def _start_workers(self) -> None:
        """The encoder actors, and what they say of their encoders (or why they could not load them)."""
        s = self.settings
        gpus = s.gpus_per_worker if s.device != "cpu" else 0
        actor = self.ray.remote(self.worker_class).options(
            num_cpus=s.worker_cpus, num_gpus=gpus, max_restarts=-1, max_task_retries=s.retries
        )
        self.workers = [actor.remote(s) for _ in range(self.worker_count)]
        described = started(self.ray, [w.describe.remote() for w in self.workers], "encoder")[0]
        self.attrs, self.input_size = described["attrs"], described["input_size"]

    def _tasks(self) -> None:
        remote, retries = self.ray.remote, self.settings.retries
        self.plan_task = remote(plan_slide).options(num_cpus=1, max_retries=retries)
        self.read_task = remote(read_block).options(num_cpus=1, max_retries=retries)
        self.write_task = remote(write_slide).options(num_cpus=1, max_retries=retries)

    # ------------------------------------------------------------------ the loop

    def run(self, start: float) -> Summary:
        saved = time.perf_counter()
        try:
            while self.queue or self.under_way:
                self._admit()
                self._submit_blocks()
                ready, _ = self.ray.wait(list(self.waiting), num_returns=1, timeout=1.0)
                for ref in ready:
                    self._handle(ref)
                self.progress.refresh()
                if time.perf_counter() - saved > MANIFEST_EVERY_S:
                    self._save()
                    saved = time.perf_counter()
        finally:
            self._save()
            self.progress.close()
        c = self.counts
        records = list(self.records.values())
        seconds = time.perf_counter() - start
        return Summary(records, c["embedded"], c["skipped"], c["failed"], c["tiles"], seconds, len(self.workers))

    def _admit(self) -> None:
        while self.queue and len(self.under_way) < self.slides_in_flight:
            slide = self.queue.popleft()
            work = _Slide(slide, time.perf_counter())
            if slide.problem:
                self._fail(work, slide.problem)
                continue
            self.under_way.append(work)
            self.waiting[self.plan_task.remote(slide, self.settings, self._file(slide))] = ("plan", work, -1)

    def _submit_blocks(self) -> None:
        in_flight = sum(w.pending for w in self.under_way)
        for work in self.under_way:
            while work.planned and work.next_block < len(work.blocks) and in_flight < self.blocks_in_flight:
                self._submit_block(work, work.next_block)
                work.next_block += 1
                in_flight += 1

    def _submit_block(self, work: _Slide, block: int) -> None:
        first, stop = work.blocks[block]
        grid = block_grid(work.planned.grid, first, stop)
        pixels = self.read_task.remote(work.slide.path, self.settings.slide_mpp, grid)
        worker = min(range(len(self.workers)), key=self.load.__getitem__)
        features, tiles = self.workers[worker].embed.options(num_returns=2).remote(pixels)
        self.load[worker] += 1
        work.features[block] = features
        work.pending += 1
        self.waiting[tiles] = ("block", work, worker)

    def _handle(self, ref: Any) -> None:
        what, work, detail = self.waiting.pop(ref)
        if what == "block":
            self.load[detail] -= 1
            work.pending -= 1
        if work.ended:
            return
        try:
            value = self.ray.get(ref)
        except Exception as exc:  # Ray wraps the worker's exception, or says the worker died
            self._fail(work, failure_reason(exc))
            return
        if what == "plan":
            self._planned(work, value)
        elif what == "block":
            self.progress.tiles_done(value)
            self.counts["tiles"] += value
            if work.next_block == len(work.blocks) and work.pending == 0:
                self._finish(work)
        else:
            self._done(work, value)

    def _planned(self, work: _Slide, planned: Planned) -> None:
        work.planned = planned
        if planned.skipped:
            self._skipped(work)
            return
        if not self.workers:
            self._start_workers()
        if planned.grid.spec.size != self.input_size:
            wanted, size = self.input_size, planned.grid.spec.size
            self._fail(work, f"The tile encoder takes {wanted}-px tiles, not {size} (use --size {wanted}).")
            return
        batch = self.settings.batch_size  # blocks of whole batches: the encoder sees the batches `embed` gives it
        step = -(-self.settings.block_tiles // batch) * batch
        work.blocks = [(i, min(i + step, planned.tiles)) for i in range(0, planned.tiles, step)]
        self.progress.planned(planned.tiles)
        if not work.blocks:
            self._finish(work)

    def _finish(self, work: _Slide) -> None:
        """The slide encoder on the pool, then the write task; features go worker to worker, not via us."""
        features = [work.features[i] for i in range(len(work.blocks))]
        worker = min(range(len(self.workers)), key=self.load.__getitem__)
        latents = self.workers[worker].encode_slide.remote(*features)
        ref = self.write_task.remote(self._file(work.slide), work.planned.skeleton, self.attrs, latents, *features)
        self.waiting[ref] = ("write", work, -1)

    # ------------------------------------------------------------------ outcomes

    def _done(self, work: _Slide, tiles: int) -> None:
        self.counts["embedded"] += 1
        self._record(work, DONE, tiles, time.perf_counter() - work.start, None)

    def _skipped(self, work: _Slide) -> None:
        self.counts["skipped"] += 1
        before = self.previous.get(work.slide.name, {})
        self._record(work, DONE, work.planned.tiles, float(before.get("seconds") or 0.0), None)

    def _fail(self, work: _Slide, reason: str) -> None:
        self.counts["failed"] += 1
        tiles = work.planned.tiles if work.planned else None
        self._record(work, FAILED, tiles, time.perf_counter() - work.start, reason)

    def _record(self, work: _Slide, status: str, tiles: int | None, seconds: float, error: str | None) -> None:
        import json

        work.ended = True
        work.features.clear()  # the features leave the object store once no task needs them
        if work in self.under_way:
            self.under_way.remove(work)
        slide = work.slide
        fingerprint = work.planned.fingerprint if work.planned else None
        region = json.dumps(slide.region) if slide.region else None
        record = SlideRecord(str(slide.path), slide.name, fingerprint, status, tiles, seconds, error, slide.case)
        record.region = region
        self.records[slide.name] = record
        self.progress.slide_ended(record, planned=work.planned is not None and not work.planned.skipped)

    def _file(self, slide: CohortSlide) -> Path:
        return self.out / f"{slide.name}.h5"

    def _save(self) -> None:
        if self.records:
            write_manifest(self.out, list(self.records.values()))


def started(ray: Any, checks: list[Any], what: str) -> list[Any]:
    """The workers' answers to a first call; a worker that could not load its models ends the run here."""
    try:
        return ray.get(checks)
    except Exception as exc:  # Ray wraps the worker's exception, or says the worker died
        hint = "every node needs the same model paths and the cohort extra (docs/cohort.md)"
        raise BridgeError(f"The {what} workers could not start: {failure_reason(exc)}", hint) from None


def failure_reason(exc: BaseException) -> str:
    """One sentence for the manifest: the slide's own error (a damaged file, no tissue), or the worker's death."""
    cause = getattr(exc, "cause", None)  # RayTaskError: the exception raised in the task
    if isinstance(cause, BridgeError):
        return str(cause)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"
    name = type(exc).__name__
    if "Actor" in name or "WorkerCrashed" in name or "ObjectLost" in name:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else name
        return f"The worker processing it died, also on retry ({name}: {first[:200]})."
    return f"{name}: {str(exc)[:300]}"
