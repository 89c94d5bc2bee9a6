"""Cohort throughput: `cohort embed` on a local Ray against a plain sequential loop over `embed`.

CPU (default): demo slides and the demo encoders; slides/hour and tiles/s of (a) a sequential loop calling
`antoni-bridge embed` once per slide in this process (no cache hits), (b) `cohort embed` with 1 encoder
worker on a 2-CPU Ray and (c) with 2 encoder workers on a 4-CPU Ray; and the scaling ratio (c)/(b).
GPU (--gpu, only where a GPU is lent): a Virchow-shaped ViT-H/14 and a Prism-shaped perceiver with random
weights, demo slides at 20x of about 4,000 tissue tiles (a demo layout is mostly glass; a slide of 15,000
would take minutes of the GPU's time to write); tiles/s, and slides/hour normalised to 15,000-tile slides
(tiles/s x 3600 / 15,000; target >= 300 per GPU), which a 15,000-tile slide's smaller per-slide share of
planning, slide encoding and writing can only improve.
Usage: python -m benchmarks.cohort [--slides 6] [--gpu] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from antoni_bridge.cli import main as cli
from antoni_bridge.slides.demo import write_demo_slide

CPU_SLIDE = (12_000, 9_000, 0.5)  # level-0 pixels and um/px: several hundred tissue tiles each
GPU_SLIDE = (40_000, 32_000, 0.5)  # 20x: 4,045 tissue tiles of 224 px (the default demo layout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slides", type=int, default=None, help="slides in the cohort (default 6 CPU, 8 GPU)")
    parser.add_argument("--gpu", action="store_true", help="the GPU run: Virchow-shaped encoder, 20x slides")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        figures = gpu_run(Path(scratch), args.slides or 8) if args.gpu else cpu_run(Path(scratch), args.slides or 6)
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2), encoding="utf-8")


def cpu_run(scratch: Path, count: int) -> dict[str, Any]:
    from antoni_bridge.encoders.demo import write_demo_slide_encoder, write_demo_tile_encoder

    slides = _distinct_slides(scratch / "slides", count, CPU_SLIDE)
    encoders = ["--tile-encoder", str(write_demo_tile_encoder(scratch / "tile"))]
    encoders += ["--slide-encoder", str(write_demo_slide_encoder(scratch / "slide")), "--device", "cpu"]
    figures: dict[str, Any] = {"cores": os.cpu_count(), "slides": count, "runs": {}}
    start = time.perf_counter()
    for slide in sorted(slides.iterdir()):
        out = ["--out", str(scratch / "loop" / f"{slide.stem}.h5"), "--cache-dir", str(scratch / "loop-cache")]
        assert cli(["embed", str(slide), *out, *encoders]) == 0
    tiles = _tiles(scratch / "loop")
    figures["runs"]["sequential embed loop"] = _rates(count, tiles, time.perf_counter() - start)
    for workers, cpus in ((1, 2), (2, 4)):
        figures["runs"][f"cohort, {workers} worker(s), {cpus} Ray CPUs"] = _cohort(
            scratch / f"cohort-{workers}", slides, [*encoders, "--workers", str(workers), "--cpus", str(cpus)]
        )
    runs = list(figures["runs"].values())
    figures["scaling_2_over_1_workers"] = runs[2]["tiles_per_s"] / runs[1]["tiles_per_s"]
    figures["cohort_1_worker_over_loop"] = runs[1]["tiles_per_s"] / runs[0]["tiles_per_s"]
    return figures


def gpu_run(scratch: Path, count: int) -> dict[str, Any]:
    """Virchow- and Prism-shaped random weights; one large slide linked COUNT times (each its own output)."""
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: the GPU run needs one (nothing measured)")
    tile, slide_encoder = _virchow_shaped(scratch / "virchow"), _prism_shaped(scratch / "prism")
    folder = scratch / "slides"
    folder.mkdir(parents=True)
    width, height, mpp = GPU_SLIDE
    write_demo_slide(scratch / "big.svs", width, height, mpp=mpp, progress=False)
    for index in range(count):
        (folder / f"slide-{index:02d}.svs").symlink_to(scratch / "big.svs")
    encoders = ["--tile-encoder", str(tile), "--slide-encoder", str(slide_encoder), "--batch-size", "256"]
    run = _cohort(scratch / "out", folder, [*encoders, "--block-tiles", "1024"])
    per_slide = run["tiles"] / count
    return {
        "gpu": torch.cuda.get_device_name(),
        "cpus": os.cpu_count(),
        "slides": count,
        "tiles_per_slide": per_slide,
        **run,
        "slides_per_hour_at_15000_tiles": run["tiles_per_s"] * 3600 / 15_000,
        "target_slides_per_hour": 300,
    }


def suite_part(context: Any) -> dict[str, Any]:  # context: benchmarks.gpu_suite.Context
    """The GPU suite's `cohort` part: the GPU run on 4 slides; with --smoke, two small demo slides on the CPU."""
    if not context.smoke:
        return gpu_run(context.scratch / "cohort", 4)
    slides = _distinct_slides(context.scratch / "cohort-slides", 2, (4800, 3600, 0.25))
    demo = context.weights
    options = ["--tile-encoder", str(demo.tile_encoder), "--slide-encoder", str(demo.slide_encoder)]
    return _cohort(context.scratch / "cohort-out", slides, [*options, "--device", "cpu", "--cpus", "2"])


def _cohort(out: Path, slides: Path, options: list[str]) -> dict[str, Any]:
    start = time.perf_counter()
    status = cli(["cohort", "embed", str(slides), "--out", str(out), *options])
    seconds = time.perf_counter() - start
    assert status == 0, "a slide failed; see the manifest"
    return _rates(len(list(out.glob("*.h5"))), _tiles(out), seconds)


def _rates(slides: int, tiles: int, seconds: float) -> dict[str, Any]:
    """Wall-clock figures of a whole run: model loading and (for Ray) starting the workers included."""
    return {
        "seconds": round(seconds, 2),
        "tiles": tiles,
        "tiles_per_s": round(tiles / seconds, 1),
        "slides_per_hour": round(slides * 3600 / seconds, 1),
    }


def _tiles(folder: Path) -> int:
    import h5py

    total = 0
    for file in folder.glob("*.h5"):
        with h5py.File(file, "r") as h5:
            total += len(h5["coords"])
    return total


def _distinct_slides(folder: Path, count: int, size: tuple[int, int, float]) -> Path:
    width, height, mpp = size
    for index in range(count):
        write_demo_slide(folder / f"slide-{index:02d}.svs", width, height, mpp=mpp, seed=100 + index, progress=False)
    return folder


def _virchow_shaped(folder: Path) -> Path:
    """ViT-H/14 at Virchow's shape, random weights, in the published layout (config.json + safetensors)."""
    import torch

    from antoni_bridge.encoders.virchow import VIRCHOW_MODEL_ARGS, build_vit

    model = build_vit("vit_huge_patch14_224", VIRCHOW_MODEL_ARGS)
    config = {
        "architecture": "vit_huge_patch14_224",
        "model_args": VIRCHOW_MODEL_ARGS,
        "pretrained_cfg": {"tag": "random", "interpolation": "bicubic", "input_size": [3, 224, 224]},
    }
    return _save(folder, config, {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()})


def _prism_shaped(folder: Path) -> Path:
    from antoni_bridge.encoders.prism import PerceiverConfig, SlideEncoder

    config = PerceiverConfig()
    values = {"model_type": "prism", "perceiver_config": config.to_dict()}
    return _save(folder, values, SlideEncoder(config).state_dict())


def _save(folder: Path, config: dict[str, Any], state: dict[str, Any]) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


if __name__ == "__main__":
    main()
