"""Loading the language model: MedGemma-4B-IT (Gemma 3, image-text-to-text) and its tokenizer.

On CUDA it loads as 4-bit NF4 with double quantisation and bf16 compute (bitsandbytes), or in bf16;
"auto" picks bf16 when the GPU has room for it. On the CPU it loads in fp32 (tiny models only).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from antoni_bridge.encoders.sources import prepare_cpu, read_config, read_json, resolve_model_dir
from antoni_bridge.errors import BridgeError

MEDGEMMA_ID = "google/medgemma-4b-it"
BF16_NEEDS_GIB = 16.0  # MedGemma-4B in bf16 with the trained embedding and head copies, plus activations
QUANT_CHOICES = ("auto", "4bit", "bf16", "none")


@dataclass
class LoadedLLM:
    model: Any  # Gemma3ForConditionalGeneration
    tokenizer: Any
    folder: Path
    quant: str  # what was used: 4bit, bf16 or none (fp32)
    image_size: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    image_resample: int = 2  # PIL's BILINEAR, as Gemma 3's image processor


def kv_cache(cache: Any) -> dict[str, Any]:
    """Keyword arguments handing the language model its KV cache: transformers 5.24 renamed
    `past_key_values` to `cache` (the old name warns and goes away in 5.40), and older 5.x know only the old."""
    return {_CACHE_KEYWORD: cache, "use_cache": True}


def _cache_keyword() -> str:
    import transformers
    from packaging.version import Version

    return "cache" if Version(transformers.__version__) >= Version("5.24.0") else "past_key_values"


_CACHE_KEYWORD = _cache_keyword()


def choose_quant(requested: str, device: torch.device) -> str:
    """ "auto": bf16 when the GPU has room, else 4-bit; fp32 ("none") on the CPU. An explicit choice is kept
    (bitsandbytes also runs 4-bit on the CPU, slowly, which lets the quantised path be tested anywhere)."""
    if requested not in QUANT_CHOICES:
        raise BridgeError(f"Unknown quantisation {requested!r}.", f"use one of {', '.join(QUANT_CHOICES)}")
    if requested != "auto":
        return requested
    if device.type != "cuda":
        return "none"
    free, _ = torch.cuda.mem_get_info(device)
    return "bf16" if free / 2**30 >= BF16_NEEDS_GIB else "4bit"


def load_llm(source: str | os.PathLike[str], device: torch.device, quant: str = "auto") -> LoadedLLM:
    from transformers import AutoTokenizer, Gemma3ForConditionalGeneration

    folder = resolve_model_dir(source, "language model (MedGemma)")
    config = read_config(folder)
    if config.get("model_type") != "gemma3":
        raise BridgeError(
            f"{folder} holds a {config.get('model_type') or 'model of unknown type'}, not Gemma 3 (MedGemma).",
            f"give {MEDGEMMA_ID} or a folder with its files",
        )
    quant = choose_quant(quant, device)
    if device.type == "cpu":
        prepare_cpu()
    kwargs: dict[str, Any] = {"dtype": torch.float32 if quant == "none" else torch.bfloat16}
    if quant == "4bit":
        kwargs["quantization_config"] = _four_bit()
    try:
        model = Gemma3ForConditionalGeneration.from_pretrained(
            folder, device_map={"": str(device)}, attn_implementation="sdpa", **kwargs
        )
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except BridgeError:
        raise
    except Exception as exc:  # transformers, safetensors and tokenizers raise many types for damaged files
        raise BridgeError(f"The language model in {folder} cannot be loaded ({exc}).", "download it again") from exc
    size, mean, std, resample = _image_preprocessing(folder, config)
    return LoadedLLM(model.eval(), tokenizer, folder, quant, size, mean, std, resample)


def _four_bit() -> Any:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise BridgeError(
            "4-bit loading needs bitsandbytes, which is not installed.",
            "pip install 'antoni-bridge[gpu]', or use --quant bf16",
        ) from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_quant_storage=torch.bfloat16,
    )


def _image_preprocessing(folder: Path, config: dict[str, Any]) -> tuple[int, tuple, tuple, int]:
    """Input size, normalisation and resampling of the SigLIP tower, from preprocessor_config.json."""
    size = int(config.get("vision_config", {}).get("image_size", 896))
    mean, std, resample = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 2
    path = folder / "preprocessor_config.json"
    if path.is_file():
        values = read_json(path)
        mean = tuple(values.get("image_mean", mean))
        std = tuple(values.get("image_std", std))
        resample = int(values.get("resample", resample))
    return size, mean, std, resample
