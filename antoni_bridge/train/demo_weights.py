"""Making the demo weights: the demo task learned through the project's own commands.

Demo slides are written (seeded layouts), their conversations and held-out labels come from the layouts
(antoni_bridge.demo_task), and then the same commands a user runs do the rest, each as its own
process: `dataset build` with the demo encoders, `train` stage 1 (projector) and stage 2 (projector,
LoRA and the embedding/head copies), and `eval` on held-out slides with both controls. All on the CPU,
seeded. The result is a demo weights folder (tile-encoder, slide-encoder, llm, antoni) with MADE.json:
the command, the seed, the settings, the time each step took and the held-out accuracy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from antoni_bridge.errors import BridgeError
from antoni_bridge.files import replacing_folder

MADE_FILE = "MADE.json"


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the demo weights besides the code."""

    seed: int = 0
    train_slides: int = 120
    test_slides: int = 40
    image_tokens: int = 32  # the projector's output: 256 as published; fewer train four times as fast
    stage1: dict[str, Any] | None = None
    stage2: dict[str, Any] | None = None

    def stage(self, number: int) -> dict[str, Any]:
        common = {"batch_size": 16, "gradient_accumulation": 1, "warmup_ratio": 0.05, "weight_decay": 0.0,
                  "projector_dropout": 0.0, "lora_dropout": 0.0, "gradient_checkpointing": False,
                  "save_every": 10**6, "eval_every": 10**6, "quant": "none", "seed": self.seed}  # fmt: skip
        own = {1: {"learning_rate": 2e-3, "epochs": 3}, 2: {"learning_rate": 2e-3, "epochs": 60}}[number]
        return common | own | ((self.stage1 if number == 1 else self.stage2) or {})


def make_demo_weights(out: Path, recipe: Recipe, work: Path | None = None, log=print) -> dict[str, Any]:
    """Make the trained demo weights in `out` (replaced whole); returns what MADE.json records."""
    from antoni_bridge.demo_assets import write_demo_weights

    with tempfile.TemporaryDirectory(prefix="antoni-demo-") as scratch:
        work = work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        timings: dict[str, float] = {}
        with _timed(timings, "untrained weights", log):
            base = write_demo_weights(work / "base", recipe.seed, recipe.image_tokens)
        with _timed(timings, "slides", log):
            train = _write_cases(work / "train", recipe.train_slides, 1_000_000 * recipe.seed + 1)
            test = _write_cases(work / "test", recipe.test_slides, 1_000_000 * recipe.seed + 500_001)
        encoders = ["--tile-encoder", str(base.tile_encoder), "--slide-encoder", str(base.slide_encoder)]
        for name, folder in (("train", train), ("test", test)):
            with _timed(timings, f"dataset build ({name})", log):
                _cli("dataset", "build", "--slides", str(folder / "slides"), "--conversations",
                     str(folder / "conversations.jsonl"), "--out", str(folder / "data.h5"), *encoders,
                     "--device", "cpu", "--cache-dir", str(work / "features"))  # fmt: skip
        for stage in (1, 2):
            start = str(work / "stage1" / "final") if stage == 2 else str(base.antoni)
            config = {"stage": stage, "train_data": str(train / "data.h5"), "llm": str(base.llm),
                      "output_dir": str(work / f"stage{stage}"), "weights": start} | recipe.stage(stage)  # fmt: skip
            path = work / f"stage{stage}.yaml"
            path.write_text(yaml.safe_dump(config), encoding="utf-8")
            with _timed(timings, f"train stage {stage}", log):
                _cli("train", "--config", str(path), "--restart")
        trained = work / "stage2" / "final"
        with _timed(timings, "eval", log):
            figures = evaluate(trained, base.llm, test, work / "eval")
        made = {
            "command": " ".join(["antoni-bridge", "make-demo-weights", str(out), "--seed", str(recipe.seed)]),
            "seed": recipe.seed,
            "train_slides": recipe.train_slides,
            "test_slides": recipe.test_slides,
            "image_tokens": recipe.image_tokens,
            "stage1": recipe.stage(1),
            "stage2": recipe.stage(2),
            "seconds": {k: round(v, 1) for k, v in timings.items()},
            "seconds_total": round(sum(timings.values()), 1),
            "cpu_threads": os.cpu_count(),
            "held_out": figures,
            "versions": _versions(),
        }
        _assemble(out, base, trained, made)
    return made


def evaluate(weights: Path, llm: Path, cases: Path, out: Path) -> list[dict[str, Any]]:
    """`antoni-bridge eval` of `weights` on held-out cases, with both controls; the metric rows."""
    _cli("eval", "--data", str(cases / "data.h5"), "--labels", str(cases / "labels.json"), "--weights", str(weights),
         "--llm", str(llm), "--quant", "none", "--device", "cpu", "--max-new-tokens", "24",
         "--control", "no-image", "--control", "shuffled", "--out", str(out))  # fmt: skip
    rows = json.loads((out / "report.json").read_text(encoding="utf-8"))["metrics"]
    return [{k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()} for row in rows]


def _write_cases(folder: Path, count: int, first_seed: int) -> Path:
    """`count` demo slides with their conversations (JSON lines) and eval labels."""
    from antoni_bridge.demo_task import SlideFacts, conversations, labels
    from antoni_bridge.slides.demo import demo_layout, write_demo_slide

    (folder / "slides").mkdir(parents=True, exist_ok=True)
    lines, labelled = [], []
    for index in range(count):
        key = f"demo-{first_seed + index}"
        path = folder / "slides" / f"{key}.svs"
        seed = first_seed + index
        layout = (
            demo_layout(10_000, 7_500, seed) if path.is_file() else write_demo_slide(path, seed=seed, progress=False)
        )
        facts = SlideFacts.of(layout)
        lines.append(json.dumps({"slide": f"{key}.svs", "key": key, "conversations": conversations(facts)}))
        labelled.append(labels(key, facts))
    (folder / "conversations.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "labels.json").write_text(json.dumps(labelled, indent=1), encoding="utf-8")
    return folder


def _assemble(out: Path, base: Any, trained: Path, made: dict[str, Any]) -> None:
    """The demo weights folder: the untrained encoders and language model, the trained ANTONI weights (marked
    as demo weights, their language model found next to them), and MADE.json; replaced whole."""
    from antoni_bridge.model.config import AntoniConfig

    with replacing_folder(out) as tmp:
        for name in ("tile_encoder", "slide_encoder", "llm"):
            shutil.copytree(getattr(base, name), tmp / getattr(base, name).name)
        shutil.copytree(trained, tmp / "antoni")
        config = AntoniConfig.read(tmp / "antoni")
        config.llm_model_id, config.demo = str(Path("..") / "llm"), True
        config.write(tmp / "antoni")
        (tmp / MADE_FILE).write_text(json.dumps(made, indent=1) + "\n", encoding="utf-8")


def _cli(*args: str) -> None:
    """One of our commands, run as a user runs it (its own process; its output shown as it comes)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, "-m", "antoni_bridge.cli", *args], env=env, check=False)
    if done.returncode:
        raise BridgeError(f"`antoni-bridge {args[0]}` failed while making the demo weights.", "see its output above")


class _timed:
    def __init__(self, timings: dict[str, float], name: str, log) -> None:
        self.timings, self.name, self.log = timings, name, log

    def __enter__(self) -> None:
        self.log(f"== {self.name}")
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.timings[self.name] = time.perf_counter() - self.start
        self.log(f"   {self.name}: {self.timings[self.name]:.1f} s")


def _versions() -> dict[str, str]:
    import tokenizers
    import torch
    import transformers

    from antoni_bridge import __version__

    return {"antoni_bridge": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__, "python": sys.version.split()[0]}  # fmt: skip


def make_and_report(out: Path, seed: int, untrained: bool, work: Path | None) -> int:
    """`antoni-bridge make-demo-weights`: trained (the default) or the untrained start."""
    from antoni_bridge.demo_assets import write_demo_weights

    if untrained:
        weights = write_demo_weights(out, seed)
        print(f"wrote untrained demo weights (random: the answers mean nothing) to {out}:")
        for name, folder in vars(weights).items():
            print(f"  {name:14} {folder}")
        return 0
    made = make_demo_weights(out, Recipe(seed=seed), work, log=lambda line: print(line, flush=True))
    print(f"wrote demo weights trained on the demo task to {out} in {made['seconds_total']:.0f} s:")
    for row in made["held_out"]:
        accuracy = ", ".join(
            f"{k.removesuffix('_accuracy')} {v:.2f}" for k, v in row.items() if k.endswith("_accuracy")
        )
        print(f"  {row['variant']}: {accuracy}")
    return 0
