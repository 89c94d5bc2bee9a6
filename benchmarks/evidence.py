"""An evidence map on the CPU (issue 16): `explain` with K=64 groups, the finer pass and 8 random orders, for
an answer of the learned demo model about the demo slide (target: within 10 s).

The slide is embedded and asked about first (its tile features are then in the feature cache, as after any
question in the daemon); the map alone is timed, `repeats` times, in wall-clock and CPU seconds (with
`--threads 1` the CPU seconds are what an idle core would take). Prints a Markdown table with the machine's
load, as the wall-clock time depends on what else runs.
Usage: python -m benchmarks.evidence [SLIDE] [--repeats R] [--threads T]
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

from antoni_bridge.demo_assets import demo_weights
from antoni_bridge.demo_task import QUESTIONS
from antoni_bridge.engine import Engine, EngineSettings, GenerationOptions, ModelChoice, SlideSource
from benchmarks.common import slide_arguments


def main() -> None:
    args = slide_arguments(__doc__ or "", repeats=3)
    weights = demo_weights()
    choice = ModelChoice(str(weights.tile_encoder), str(weights.slide_encoder), weights.antoni, demo=True)
    engine = Engine(choice, Path(tempfile.mkdtemp()), settings=EngineSettings(threads=args.threads))
    source, conversation = SlideSource(args.slide), [{"role": "user", "content": QUESTIONS["stain"]}]
    answer = engine.ask(source, conversation, GenerationOptions(max_new_tokens=24)).text
    masks: dict[str, int] = {}

    def count(progress) -> None:  # slides.planning.Progress
        masks[progress.stage] = progress.total

    seconds, cpu = [], []
    for _ in range(args.repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        explained = engine.explain(source, conversation, answer, on_progress=count)
        seconds.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    passes = sum(masks.get(stage, 0) for stage in ("occlusion", "refining", "faithfulness"))
    print(f"| tiles | groups | answer | masks scored | map s (median of {args.repeats}) | CPU s | gap | load (1 min) |")
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {explained.tiles} | {explained.groups} | {answer!r} | {passes} | {statistics.median(seconds):.1f} "
        f"(min {min(seconds):.1f}) | {statistics.median(cpu):.1f} | {explained.faithfulness['gap']:.3f} "
        f"| {os.getloadavg()[0]:.1f} |"
    )


if __name__ == "__main__":
    main()
