"""Tile-encoder throughput on a GPU: the real Virchow shape (ViT-H/14, 224 px), random weights, bf16.

Target on an H100: 1,200 tiles/s or more. Needs CUDA; on a machine without one it says so and exits 0.
It times the encoder alone (tiles already on the GPU as uint8) and the whole `TileEncoder.embed`
(host uint8 -> device, resize 448 -> 224 on the GPU, normalise, ViT, pooling).
Usage: python -m benchmarks.gpu_tile_encoder [--batch-size 256] [--seconds 20]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from antoni_bridge.encoders.virchow import VIRCHOW_MODEL_ARGS, TileEncoder, build_vit


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: this benchmark needs a GPU (nothing measured)")
        return
    device = torch.device("cuda")
    model = build_vit("vit_huge_patch14_224", VIRCHOW_MODEL_ARGS).to(device).eval()
    encoder = TileEncoder(model, "random", "vit_huge_patch14_224.random", "random", 224, device, torch.bfloat16)
    tiles = np.random.default_rng(0).integers(0, 256, (args.batch_size, 448, 448, 3), dtype=np.uint8)
    pinned = torch.from_numpy(tiles).pin_memory()
    for _ in range(3):
        encoder.embed(tiles)
    torch.cuda.synchronize()
    rate_full = _rate(lambda: encoder.embed(pinned.numpy()), args.batch_size, args.seconds)
    batch = encoder.preprocess(tiles)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        rate_model = _rate(lambda: model(batch), args.batch_size, args.seconds)
    print(f"device: {torch.cuda.get_device_name()}; batch {args.batch_size}")
    print(f"ViT-H/14 forward alone, bf16: {rate_model:,.0f} tiles/s")
    print(f"TileEncoder.embed (448-px uint8 from host, resize + normalise on GPU): {rate_full:,.0f} tiles/s")
    print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


def _rate(step, batch: int, seconds: float) -> float:
    torch.cuda.synchronize()
    start, count = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        step()
        count += batch
    torch.cuda.synchronize()
    return count / (time.perf_counter() - start)


if __name__ == "__main__":
    main()
