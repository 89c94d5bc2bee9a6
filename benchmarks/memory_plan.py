"""Where the daemon's weights live: parameter bytes per component and per device, at the real shapes.

Counted on the meta device (shapes only, nothing allocated), so it runs on any machine:
- Virchow ViT-H/14 and Prism's perceiver in bf16 (their storage dtype on a GPU);
- MedGemma-4B-IT (Gemma 3 at its published shapes): every linear layer of the language model and the SigLIP
  tower in NF4 with double quantisation as bitsandbytes stores it (0.5 byte a weight, plus one byte of scale
  per 64 weights and a float per 256 scales), the rest (embedding, norms, lm_head) in bf16;
- ANTONI-Alpha's own parts in bf16: the projector, LoRA r=16 on every linear layer but lm_head ("all-linear"),
  and the trained copies of embed_tokens and lm_head (peft's modules_to_save keeps the original beside them).
The original (tied) embedding is only read in view mode, with the adapter off; "parked" keeps it on the CPU
until then. Usage: python -m benchmarks.memory_plan
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

NF4_BYTES_PER_WEIGHT = 0.5 + 1 / 64 + 4 / (64 * 256)
BF16 = 2


def bytes_per_device(module: nn.Module) -> dict[str, float]:
    """GB of parameters and buffers per device of a loaded module (4-bit weights count at their packed size)."""
    totals: dict[str, float] = defaultdict(float)
    seen: set[int] = set()
    for tensor in [*module.parameters(), *module.buffers()]:
        if id(tensor) in seen:  # tied weights are stored once
            continue
        seen.add(id(tensor))
        totals[str(tensor.device)] += tensor.numel() * tensor.element_size() / 1e9
    return dict(totals)


def stack_plan() -> dict[str, float]:
    """GB per component of the whole stack in 4-bit, and the GPU total with the original embedding on the GPU
    (as loaded) and parked on the CPU."""
    from antoni_bridge.encoders.prism import PerceiverConfig, SlideEncoder
    from antoni_bridge.encoders.virchow import VIRCHOW_MODEL_ARGS, build_vit
    from antoni_bridge.model.config import AntoniConfig
    from antoni_bridge.model.projector import AttentionPoolingProjector

    with torch.device("meta"):
        vit = build_vit("vit_huge_patch14_224", VIRCHOW_MODEL_ARGS)
        perceiver = SlideEncoder(PerceiverConfig())
        llm = _medgemma_on_meta()
        config = AntoniConfig()
        projector = AttentionPoolingProjector(config, llm.config.get_text_config().hidden_size)
    embedding = llm.get_input_embeddings().weight.numel() * BF16 / 1e9
    plan = {
        "tile_encoder_gb": _count(vit) * BF16 / 1e9,
        "slide_encoder_gb": _count(perceiver) * BF16 / 1e9,
        "llm_nf4_layers_gb": _linear_weights(llm) * NF4_BYTES_PER_WEIGHT / 1e9,
        "llm_bf16_rest_gb": (_count(llm) - _linear_weights(llm)) * BF16 / 1e9,  # includes the original embedding
        "original_embedding_gb": embedding,
        "trained_copies_gb": 2 * embedding,
        "lora_gb": _lora_weights(llm, config.lora_r) * BF16 / 1e9,
        "projector_gb": _count(projector) * BF16 / 1e9,
    }
    on_gpu = sum(v for k, v in plan.items() if k != "original_embedding_gb")  # it is inside llm_bf16_rest_gb
    return plan | {"gpu_total_as_loaded_gb": on_gpu, "gpu_total_parked_gb": on_gpu - embedding}


def _medgemma_on_meta() -> nn.Module:
    from transformers import Gemma3ForConditionalGeneration

    from benchmarks.generation import medgemma_config

    model = Gemma3ForConditionalGeneration(medgemma_config(pad=0, bos=2, eos=1, image_tokens=(262144, 255999, 256000)))
    model.tie_weights()  # as loading does (transformers 5.0 leaves a model built on meta untied)
    return model


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _quantised(name: str, module: nn.Module) -> bool:
    """bitsandbytes replaces every nn.Linear but the output head (transformers keeps lm_head in bf16)."""
    return isinstance(module, nn.Linear) and not name.endswith("lm_head")


def _linear_weights(model: nn.Module) -> int:
    return sum(m.weight.numel() for name, m in model.named_modules() if _quantised(name, m))


def _lora_weights(model: nn.Module, rank: int) -> int:
    return sum(rank * (m.in_features + m.out_features) for name, m in model.named_modules() if _quantised(name, m))


def main() -> None:
    for key, value in stack_plan().items():
        print(f"{key}: {value:.2f}")


if __name__ == "__main__":
    main()
