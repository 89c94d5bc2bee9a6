"""Demo encoders: tiny random-weight models with Virchow's and Prism's exact structure and key names.

They are written in the published folder layout (config.json + model.safetensors) and loaded by the
same code that loads the real weights, so everything downstream runs offline. Their embeddings mean
nothing; every output made with them says so (`prism-demo`, `...demo` in the encoder names).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from antoni_bridge.encoders.prism import PerceiverConfig, SlideEncoder
from antoni_bridge.encoders.virchow import VIRCHOW_MODEL_ARGS, build_vit

DEMO_VIT_ARGS = {**VIRCHOW_MODEL_ARGS, "embed_dim": 48, "depth": 2, "num_heads": 3}
DEMO_PERCEIVER = PerceiverConfig(latent_dim=64, context_dim=96, mhsa_heads=4)


def write_demo_tile_encoder(folder: Path, seed: int = 0) -> Path:
    """A ViT-H/14-shaped timm model, narrowed to width 48 (96-wide embeddings)."""
    torch.manual_seed(seed)
    model = build_vit("vit_huge_patch14_224", DEMO_VIT_ARGS)
    config = {
        "architecture": "vit_huge_patch14_224",
        "model_args": DEMO_VIT_ARGS,
        "pretrained_cfg": {"tag": "antoni_bridge_demo", "interpolation": "bicubic", "input_size": [3, 224, 224]},
    }
    return _save(folder, config, model.state_dict())


def write_demo_slide_encoder(folder: Path, seed: int = 0) -> Path:
    """Prism's perceiver with every depth and head count of the original, at width 64."""
    torch.manual_seed(seed)
    encoder = SlideEncoder(DEMO_PERCEIVER)
    config = {"model_type": "prism", "antoni_bridge_demo": True, "perceiver_config": DEMO_PERCEIVER.to_dict()}
    return _save(folder, config, encoder.state_dict())


def _save(folder: Path, config: dict[str, object], state: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return folder
