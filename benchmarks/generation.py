"""Generation speed of ANTONI-Alpha: time to first token, tokens/s, and the gain from prefix reuse.

Default: the demo weights on the CPU (random, tiny), which measures our loop's overhead, not a model.
--medgemma-shape: MedGemma-4B-IT's architecture with random weights (needs CUDA), in 4-bit and bf16,
prefill of 256 image + about 50 text tokens; targets on an H100: first token <= 150 ms, >= 40 tokens/s
in 4-bit, >= 80 tokens/s in bf16, peak memory <= 5 GB in 4-bit. It also checks that unloading returns
GPU memory to its baseline.
Usage: python -m benchmarks.generation [--medgemma-shape] [--tokens 128] [--repeats 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch

from antoni_bridge.demo_assets import write_demo_weights
from antoni_bridge.gpu import gpu_memory, release_unused
from antoni_bridge.model.antoni import AntoniModel
from antoni_bridge.model.config import AntoniConfig
from antoni_bridge.model.generation import GenerationOptions
from antoni_bridge.model.llm import load_llm

QUESTION = (
    "Describe the tissue architecture in this slide, including glands, stroma and any inflammatory infiltrate, "
    "and state whether a neoplasm is present and what the most likely diagnosis is."
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--medgemma-shape", action="store_true")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:  # a random MedGemma-shaped model is about 9 GB
        run(Path(scratch), args)


def run(folder: Path, args: argparse.Namespace) -> None:
    weights = write_demo_weights(folder)
    if not args.medgemma_shape:
        measure(AntoniModel.load(weights.antoni), 64, "demo weights, CPU", args)
        return
    if not torch.cuda.is_available():
        print("no CUDA device: --medgemma-shape needs a GPU (nothing measured)")
        return
    llm_folder = write_medgemma_shaped(folder / "medgemma-shape", weights.llm)
    for quant in ("4bit", "bf16"):
        release_unused()
        baseline = gpu_memory()["allocated_mib"]
        torch.cuda.reset_peak_memory_stats()
        config = AntoniConfig(projector_input_dim=1280)
        model = AntoniModel(config, load_llm(llm_folder, torch.device("cuda"), quant))
        measure(model, 1280, f"MedGemma-4B shape, {quant}, {torch.cuda.get_device_name()}", args)
        print(f"  peak GPU memory {gpu_memory()['peak_mib'] * 2**20 / 1e9:.2f} GB (allocated by torch)")
        del model
        release_unused()
        print(f"  after unloading: {gpu_memory()['allocated_mib'] - baseline:.1f} MiB above the baseline")


def measure(model: AntoniModel, width: int, label: str, args: argparse.Namespace) -> None:
    figures = generation_figures(model, width, args.tokens, args.repeats)
    prompt = f"prompt {figures['prompt_tokens']} tokens (256 image)"
    print(f"{label}: {prompt}, {args.tokens} new tokens, median of {args.repeats}")
    print(f"  time to first token: {figures['first_token_ms']:.1f} ms")
    print(f"  decoding: {figures['tokens_per_s']:.1f} tokens/s")
    print(
        f"  follow-up ({figures['follow_up_prompt_tokens']} prompt tokens, {figures['follow_up_reused_tokens']} "
        f"reused): first token after {figures['follow_up_first_token_ms']:.1f} ms with prefix reuse vs "
        f"{figures['follow_up_fresh_first_token_ms']:.1f} ms without "
        f"({figures['follow_up_fresh_first_token_ms'] / figures['follow_up_first_token_ms']:.1f}x)"
    )


def generation_figures(model: AntoniModel, width: int, tokens: int, repeats: int) -> dict[str, float]:
    """Medians over `repeats`: first token, decoding speed, and a follow-up's first token with and without the
    conversation's KV cache (random weights never stop early: end tokens are disabled)."""
    model.ids = dataclasses.replace(model.ids, eos=-1, end_of_turn=-2)
    latents = torch.randn(513, width)
    options = GenerationOptions(max_new_tokens=tokens, greedy=True)
    question = [{"role": "user", "content": QUESTION}]
    model.answer(latents, question, GenerationOptions(max_new_tokens=4))  # warm-up
    cold, follow = [], []
    for index in range(repeats):
        key = f"slide-{index}"
        first = model.answer(latents, question, options, prefix_key=key)
        follow_up = [*question, {"role": "assistant", "content": first.text}, {"role": "user", "content": "Why?"}]
        again = model.answer(latents, follow_up, options, prefix_key=key)
        model.prefixes.clear()
        fresh = model.answer(latents, follow_up, options)
        cold.append((first.first_token_s, first.tokens_per_s, first.prompt_tokens))
        follow.append((again.first_token_s, fresh.first_token_s, again.reused_tokens, fresh.prompt_tokens))
    return {
        "prompt_tokens": cold[0][2],
        "first_token_ms": statistics.median(c[0] for c in cold) * 1000,
        "tokens_per_s": statistics.median(c[1] for c in cold),
        "follow_up_prompt_tokens": follow[0][3],
        "follow_up_reused_tokens": follow[0][2],
        "follow_up_first_token_ms": statistics.median(f[0] for f in follow) * 1000,
        "follow_up_fresh_first_token_ms": statistics.median(f[1] for f in follow) * 1000,
    }


def write_medgemma_shaped(folder: Path, demo_llm: Path) -> Path:
    """Gemma 3 at MedGemma-4B-IT's published shapes, random bf16 weights, with the demo tokenizer."""
    from transformers import AutoTokenizer, Gemma3ForConditionalGeneration

    tokenizer = AutoTokenizer.from_pretrained(demo_llm)
    image_tokens = tuple(tokenizer.convert_tokens_to_ids(["<image_soft_token>", "<start_of_image>", "<end_of_image>"]))
    config = medgemma_config(tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, image_tokens)
    with torch.device("cuda"):
        model = Gemma3ForConditionalGeneration(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    release_unused()
    return folder


def medgemma_config(pad: int, bos: int, eos: int, image_tokens: tuple[int, int, int]) -> Any:
    """MedGemma-4B-IT's Gemma3Config (published shapes), with the given special token ids."""
    from transformers import Gemma3Config

    return Gemma3Config(
        text_config={
            "vocab_size": 262208,
            "hidden_size": 2560,
            "intermediate_size": 10240,
            "num_hidden_layers": 34,
            "num_attention_heads": 8,
            "num_key_value_heads": 4,
            "head_dim": 256,
            "sliding_window": 1024,
            "max_position_embeddings": 131072,
            "rope_scaling": {"rope_type": "linear", "factor": 8.0},
            "pad_token_id": pad,
            "bos_token_id": bos,
            "eos_token_id": eos,
        },
        vision_config={
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "num_hidden_layers": 27,
            "num_attention_heads": 16,
            "image_size": 896,
            "patch_size": 14,
            "vision_use_head": False,
        },
        mm_tokens_per_image=256,
        image_token_index=image_tokens[0],
        boi_token_index=image_tokens[1],
        eoi_token_index=image_tokens[2],
    )


if __name__ == "__main__":
    main()
