"""Training speed: optimiser steps/s of stage 1 and stage 2, against a forward pass of the same batch
(the baseline: what a step costs beyond inference), with gradient checkpointing on and off, all in one run.

Default: demo weights on the CPU, 16 cases, batch 4.
--medgemma-shape: MedGemma-4B-IT's architecture with random weights in 4-bit on CUDA, batch 16,
256 image tokens + about 512 text tokens per example; reports steps/s and peak GPU memory.
Usage: python -m benchmarks.training [--medgemma-shape] [--steps 6]
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml

from antoni_bridge.demo_assets import write_demo_weights
from antoni_bridge.train.config import TrainConfig, read_config
from antoni_bridge.train.data import Case, InstructData, write_instruct_data
from antoni_bridge.train.loss import collate
from antoni_bridge.train.trainer import Trainer, load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--medgemma-shape", action="store_true")
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        weights = write_demo_weights(folder / "weights")
        if args.medgemma_shape:
            if not torch.cuda.is_available():
                print("no CUDA device: --medgemma-shape needs a GPU (nothing measured)")
                return
            from benchmarks.generation import write_medgemma_shaped

            llm = write_medgemma_shaped(folder / "medgemma-shape", weights.llm)
            setup = {"llm": str(llm), "weights": None, "quant": "4bit", "batch_size": 16}
            measure(
                folder,
                setup,
                width=1280,
                words=340,
                steps=args.steps,
                label=f"MedGemma shape, 4-bit, {torch.cuda.get_device_name()}",
            )
        else:
            setup = {"llm": str(weights.llm), "weights": str(weights.antoni), "quant": "none", "batch_size": 4}
            measure(folder, setup, width=64, words=40, steps=args.steps, label="demo weights, CPU")
            for tokens in (1024, 2048, 4096):
                loss_memory(tokens)


def measure(folder: Path, setup: dict, width: int, words: int, steps: int, label: str) -> None:
    config = training_cases(folder, setup, width, words, steps)
    print(label)
    for stage in (1, 2):
        for checkpointing in (True, False):
            name = f"  stage {stage}, gradient checkpointing {'on' if checkpointing else 'off'}"
            try:
                figures = one_run_figures(config(stage, checkpointing))
            except torch.OutOfMemoryError:
                print(f"{name}: out of memory")
                continue
            finally:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            peak = f", peak GPU memory {figures['peak_gb']:.1f} GB" if "peak_gb" in figures else ""
            print(
                f"{name}: {figures['steps_per_s']:.2f} steps/s ({1 / figures['steps_per_s']:.2f} s per step of "
                f"{setup['batch_size']}), a forward pass of the batch {figures['forward_ms']:.0f} ms = "
                f"{figures['step_over_forward']:.1f}x{peak}"
            )


def training_cases(folder: Path, setup: dict, width: int, words: int, steps: int) -> Callable[[int, bool], TrainConfig]:
    """Write `steps` batches of random-latent cases with about `words` tokens of answer each; return a maker
    of the training config for a stage, with gradient checkpointing on or off."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    answer = " ".join(["tissue"] * words)
    turns = [{"role": "user", "content": "Describe the slide."}, {"role": "assistant", "content": answer}]
    latents = [rng.normal(size=(513, width)).astype(np.float32) for _ in range(setup["batch_size"] * steps)]
    cases = [Case(f"c{i}", values, {"clean_report": turns}) for i, values in enumerate(latents)]
    write_instruct_data(folder / "train.h5", cases)

    def config(stage: int, checkpointing: bool) -> TrainConfig:
        values = {
            "stage": stage,
            "train_data": "train.h5",
            "output_dir": f"out{stage}{checkpointing}",
            "epochs": 1,
            "gradient_accumulation": 1,
            "gradient_checkpointing": checkpointing,
            "save_every": 10**6,
        }
        path = folder / f"stage{stage}.yaml"
        path.write_text(yaml.safe_dump({**values, **setup}))
        return read_config(path)

    return config


def one_run_figures(config: TrainConfig) -> dict[str, float]:
    """Optimiser steps/s of one training run, against a forward pass of the same batch (and the GPU's peak)."""
    data = InstructData(config.train_data)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    trainer = Trainer(config, load_model(config, data.latent_width, device), data, None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    forward = _forward_seconds(trainer)
    start = time.perf_counter()
    trainer.run()
    seconds = (time.perf_counter() - start) / trainer.total_steps
    figures = {"steps_per_s": 1 / seconds, "forward_ms": forward * 1000, "step_over_forward": seconds / forward}
    if device.type == "cuda":
        figures["peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return figures


@torch.no_grad()
def _forward_seconds(trainer: Trainer) -> float:
    batch = collate(trainer.model, trainer.data, torch.arange(trainer.config.batch_size), 0, trainer.config.seed)
    trainer.batch_loss(batch)  # warm-up
    start = time.perf_counter()
    trainer.batch_loss(batch)
    return time.perf_counter() - start


def loss_memory(tokens: int, width: int = 256, vocabulary: int = 262_144) -> None:
    """Peak memory of the loss and its backward over MedGemma's vocabulary: full float32 logits (the
    baseline) against the chunked projection, each in a fresh process so its peak is its own."""
    print(f"loss over {tokens} supervised tokens, vocabulary {vocabulary}, width {width} (peak process memory):")
    context = multiprocessing.get_context("spawn")
    with context.Pool(1, maxtasksperchild=1) as pool:
        for chunked in (False, True):
            peak = pool.apply(_loss_peak_gb, (tokens, width, vocabulary, chunked))
            print(f"  {'chunked (1024 tokens)' if chunked else 'full logits'}: {peak:.2f} GB")


def _loss_peak_gb(tokens: int, width: int, vocabulary: int, chunked: bool) -> float:
    import resource

    import torch.nn.functional as F

    from antoni_bridge.train.loss import token_loss_sum

    head = torch.nn.Linear(width, vocabulary, bias=False)
    hidden = torch.randn(tokens, width, requires_grad=True)
    targets = torch.randint(vocabulary, (tokens,))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if chunked:
        loss = token_loss_sum(head, hidden, targets)
    else:
        loss = F.cross_entropy(head(hidden).float(), targets, reduction="sum")
    loss.backward()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 2**20  # KiB on Linux


if __name__ == "__main__":
    main()
