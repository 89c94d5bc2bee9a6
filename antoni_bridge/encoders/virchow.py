"""The tile encoder: Virchow (v1, or Virchow2) through timm, with Paige's published recipe.

Recipe: timm ViT-H/14 with SwiGLU-packed MLPs and SiLU, 224-px tiles at 0.5 um/px, bicubic resize,
ImageNet normalisation; the embedding is the class token next to the mean of the patch tokens
(2 x 1280 = 2560 for Virchow v1). Resizing and normalising run on the encoder's device, so a GPU
does that work too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import timm
import torch
import torch.nn.functional as F
from timm.layers import SwiGLUPacked

from antoni_bridge.encoders import VIRCHOW_ID
from antoni_bridge.encoders.sources import (
    describe_keys,
    read_config,
    read_state_dict,
    resolve_model_dir,
    weights_identity,
)
from antoni_bridge.errors import BridgeError

VIRCHOW_MODEL_ARGS = {  # timm arguments of the published Virchow config.json
    "img_size": 224,
    "init_values": 1e-5,
    "num_classes": 0,
    "mlp_ratio": 5.3375,
    "global_pool": "",
    "dynamic_img_size": True,
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class TileEncoder:
    """A loaded tile encoder: uint8 tiles in, (B, 2 x width) float32 embeddings out."""

    model: torch.nn.Module
    source: str  # what the user named: a hub id or a folder
    name: str  # architecture and tag, recorded in feature files
    identity: str  # name plus a digest of the weight files, part of cache keys
    input_size: int
    device: torch.device
    autocast_dtype: torch.dtype | None  # bf16/fp16 on CUDA, None (fp32) on CPU

    @property
    def embedding_dim(self) -> int:
        return 2 * int(self.model.embed_dim)

    def preprocess(self, pixels: np.ndarray) -> torch.Tensor:
        """(B, S, S, 3) uint8 -> (B, 3, 224, 224) normalised float on the encoder's device."""
        batch = tiles_to_tensor(pixels, self.input_size, self.device)
        mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        return (batch - mean) / std

    @torch.inference_mode()
    def embed(self, pixels: np.ndarray) -> torch.Tensor:
        """Embeddings of a batch of tiles, as float32 on the CPU."""
        batch = self.preprocess(pixels)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            tokens = self.model(batch)
        prefix = int(self.model.num_prefix_tokens)  # 1 for Virchow, 5 (class + 4 registers) for Virchow2
        embedding = torch.cat([tokens[:, 0], tokens[:, prefix:].mean(dim=1)], dim=-1)
        return embedding.float().cpu()


def build_vit(architecture: str, model_args: dict[str, object]) -> torch.nn.Module:
    """A timm ViT with Virchow's SwiGLU-packed MLP and SiLU (not JSON-serialisable, so never in configs)."""
    args = {k: v for k, v in model_args.items() if k not in ("mlp_layer", "act_layer")}
    try:
        return timm.create_model(
            architecture, pretrained=False, mlp_layer=SwiGLUPacked, act_layer=torch.nn.SiLU, **args
        )
    except (RuntimeError, TypeError, ValueError, AssertionError) as exc:  # timm's ways of refusing a config
        raise BridgeError(
            f"The tile encoder config ({architecture}) cannot be built ({exc}).", "download the model again"
        ) from exc


def tiles_to_tensor(pixels: np.ndarray, size: int, device: torch.device) -> torch.Tensor:
    """uint8 tiles (B, S, S, 3) -> float (B, 3, size, size) in [0, 1] on `device`, bicubic with antialiasing.

    On the CPU the resize runs on uint8 in channels-last layout, torch's vectorised path (about 9x the
    float path); on a GPU the tiles are moved first and resized there in float.
    """
    batch = torch.from_numpy(np.require(pixels, np.uint8, ["C", "W"])).permute(0, 3, 1, 2)
    resize = batch.shape[-1] != size or batch.shape[-2] != size
    if device.type == "cpu":
        if resize:
            batch = F.interpolate(batch, size=(size, size), mode="bicubic", antialias=True)
        return batch.float().div_(255.0).contiguous()
    batch = batch.to(device, non_blocking=True).float().div_(255.0)
    if resize:
        batch = F.interpolate(batch, size=(size, size), mode="bicubic", antialias=True).clamp_(0.0, 1.0)
    return batch


def load_tile_encoder(
    source: str | os.PathLike[str] = VIRCHOW_ID,
    device: str | torch.device = "cpu",
    precision: str = "bf16",
) -> TileEncoder:
    """Load Virchow (or a model of its architecture) from a folder, the HF cache or the hub."""
    folder = resolve_model_dir(source, "tile encoder")
    config = read_config(folder)
    architecture = config.get("architecture", "")
    if not str(architecture).startswith("vit_"):
        raise BridgeError(
            f"{folder} holds a {architecture or 'model of unknown architecture'}, not a Virchow-style ViT.",
            "give paige-ai/Virchow (or Virchow2), or a folder with its config.json and weights",
        )
    model = build_vit(architecture, config.get("model_args", {}))
    state = read_state_dict(folder, "tile encoder")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise BridgeError(
            f"The tile encoder weights in {folder} do not fit its config "
            f"(missing: {describe_keys(missing)}; unexpected: {describe_keys(unexpected)}).",
            "the folder mixes files of different models; download it again",
        )
    device = torch.device(device)
    name = f"{architecture}.{config.get('pretrained_cfg', {}).get('tag', 'unknown')}"
    autocast = _autocast_dtype(device, precision)
    return TileEncoder(  # stored in the autocast dtype on a GPU: half the memory, the same products
        model=model.to(device, autocast or torch.float32).eval(),
        source=str(source),
        name=name,
        identity=f"{name}@{weights_identity(folder)}",
        input_size=int(config.get("model_args", {}).get("img_size", 224)),
        device=device,
        autocast_dtype=autocast,
    )


def _autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    if device.type != "cuda" or precision == "fp32":
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
