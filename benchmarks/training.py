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
    rng = np.random.default_rng(0)
    answer = " ".join(["tissue"] * words)  # about `words` tokens and more of text per example
    turns = [{"role": "user", "content": "Describe the slide."}, {"role": "assistant", "content": answer}]
    latents = [rng.normal(size=(513, width)).astype(np.float32) for _ in range(setup["batch_size"] * steps)]
    cases = [Case(f"c{i}", values, {"clean_report": turns}) for i, values in enumerate(latents)]
    write_instruct_data(folder / "train.h5", cases)
    print(label)
    for stage in (1, 2):
        for checkpointing in (True, False):
            values = {
                "stage": stage,
                "train_data": "train.h5",
                "output_dir": f"out{stage}{checkpointing}",
                "epochs": 1,
                "gradient_accumulation": 1,
                "gradient_checkpointing": checkpointing,
                "save_every": 10**6,
            }
            config_path = folder / f"stage{stage}.yaml"
            config_path.write_text(yaml.safe_dump({**values, **setup}))
            try:
                print(f"  stage {stage}, gradient checkpointing {'on' if checkpointing else 'off'}: "
                      + _one_run(read_config(config_path)))  # fmt: skip
            except torch.OutOfMemoryError:
                print(f"  stage {stage}, gradient checkpointing {'on' if checkpointing else 'off'}: out of memory")
            torch.cuda.empty_cache()


def _one_run(config: TrainConfig) -> str:
    data = InstructData(config.train_data)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    trainer = Trainer(config, load_model(config, data.latent_width, device), data, None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    forward = _forward_seconds(trainer)
    start = time.perf_counter()
    trainer.run()
    seconds = (time.perf_counter() - start) / trainer.total_steps
    peak = f", peak GPU memory {torch.cuda.max_memory_allocated() / 1e9:.1f} GB" if device.type == "cuda" else ""
    return (f"{1 / seconds:.2f} steps/s ({seconds:.2f} s per step of {config.batch_size}), "
            f"a forward pass of the batch {forward * 1000:.0f} ms = {seconds / forward:.1f}x{peak}")  # fmt: skip


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
