"""The similar-slides index at 100,000 slides (issue 17): build, open, add one, query; against a baseline.

100,000 random slide embeddings of Prism's width (1280), in clusters (a slide and its near neighbours, as
slides of one case or site are), are indexed in batches of 1,000 through SimilarIndex (engine/similar.py)
in a fresh folder; then the index is opened again as a restarted daemon would, one slide is added to the
full index (what embedding one more slide costs it, after the queries), and queries (a stored embedding
plus noise) ask for the top 10, after one untimed query (torch's import and the first page-in). The baseline,
in the same run on the same data: exact search as it is usually written, a
float32 matrix in memory, `matrix @ query` and a partial sort. Our top 10 must be the baseline's.
Memory: the process's resident set (psutil) before and after, and the index's files on disk.
Usage: python -m benchmarks.similar_index [--slides N] [--dim D] [--queries Q]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from antoni_bridge.engine.similar import Entry, SimilarIndex, unit

BATCH = 1000


def embeddings(slides: int, dim: int, seed: int = 0) -> np.ndarray:
    """Clustered unit vectors: 1 centre per 20 slides, each slide its centre plus noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, slides // 20), dim), dtype=np.float32)
    members = centres[rng.integers(0, len(centres), slides)]
    return unit(members + 0.5 * rng.standard_normal((slides, dim), dtype=np.float32))


def entry(number: int) -> Entry:
    return Entry(f"/slides/case-{number // 20:05d}/slide-{number:06d}.svs", None, "", f"{number:032x}", None)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def megabytes(count: float) -> str:
    return f"{count / 2**20:,.0f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--queries", type=int, default=50)
    args = parser.parse_args()
    process = psutil.Process()
    data = embeddings(args.slides, args.dim)
    rng = np.random.default_rng(1)
    queries = unit(
        data[rng.integers(0, args.slides, args.queries)] + 0.1 * rng.standard_normal(data[: args.queries].shape)
    )
    folder = Path(tempfile.mkdtemp()) / "index"

    start = time.perf_counter()
    index = SimilarIndex(folder)
    for first in range(0, args.slides, BATCH):
        stop = min(first + BATCH, args.slides)
        index.add([entry(n) for n in range(first, stop)], data[first:stop])
    build_s = time.perf_counter() - start

    import torch  # noqa: F401  (loaded by the daemon anyway: not counted as the index's memory)

    rss = process.memory_info().rss
    start = time.perf_counter()
    reopened = SimilarIndex(folder)
    assert len(reopened) == args.slides
    open_s = time.perf_counter() - start
    reopened.search(queries[0], 10)
    ours, ours_cpu, found = [], [], []
    for query in queries:
        start, cpu = time.perf_counter(), time.process_time()
        found.append([int(m.entry.fingerprint, 16) for m in reopened.search(query, 10)])
        ours.append(time.perf_counter() - start)
        ours_cpu.append(time.process_time() - cpu)
    adds = []
    for number in range(args.slides, args.slides + 5):
        start = time.perf_counter()
        reopened.add([entry(number)], data[number % args.slides][None])
        adds.append(time.perf_counter() - start)

    rss_after = process.memory_info().rss

    matrix = data.copy()  # the baseline holds float32 rows in memory
    base, base_cpu, expected = [], [], []
    _ = matrix @ queries[0]
    for query in queries:
        start, cpu = time.perf_counter(), time.process_time()
        scores = matrix @ query
        head = np.argpartition(-scores, 10)[:10]
        expected.append(head[np.argsort(-scores[head])].tolist())
        base.append(time.perf_counter() - start)
        base_cpu.append(time.process_time() - cpu)
    same = sum(got == want for got, want in zip(found, expected, strict=True))

    disk = sum(file.stat().st_size for file in folder.iterdir())
    load = ", ".join(f"{value:.1f}" for value in psutil.getloadavg())
    print(
        f"{args.slides:,} slides x {args.dim}, {args.queries} queries (top 10), "
        f"{psutil.cpu_count()} CPU cores, load average {load}\n"
    )
    print("| | median | p95 | CPU time, median (all threads) |\n|---|---|---|---|")
    print(row("query, our index (float16 scan + float32 ranking, memory-mapped)", ours, ours_cpu))
    print(row("query, baseline (float32 matrix in memory, numpy)", base, base_cpu))
    print(row("add one slide to the full index (3 appends, manifest replaced)", adds, []))
    print(
        f"\nbuild ({args.slides // BATCH} appends of {BATCH:,}): {build_s:.1f} s; open (a restart): {open_s:.2f} s; "
        f"top 10 as the baseline's in {same} of {args.queries} queries"
    )
    print(
        f"index on disk {megabytes(disk)}; resident set after opening and querying +{megabytes(rss_after - rss)} "
        f"(memory-mapped pages included); the baseline's matrix {megabytes(matrix.nbytes)}"
    )


def row(name: str, seconds: list[float], cpu: list[float]) -> str:
    """A table row: wall-clock median and p95, and the CPU time the process spent (what a busy machine's
    other jobs do not inflate as much)."""
    spent = f"{statistics.median(cpu) * 1000:.1f} ms" if cpu else ""
    return (
        f"| {name} | {statistics.median(seconds) * 1000:.1f} ms | {percentile(seconds, 95) * 1000:.1f} ms | {spent} |"
    )


if __name__ == "__main__":
    main()
