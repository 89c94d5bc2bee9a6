"""Every GPU measurement in one run, for the few minutes a GPU is lent: one JSON and one Markdown table.

Parts, in order (a part that fails is recorded with its error and the run goes on):
- memory_plan: parameter bytes per device of the whole daemon stack at the real shapes, counted on the meta
  device (no memory, no GPU needed): Virchow ViT-H/14, Prism's perceiver, MedGemma-4B in NF4 and in bf16;
- tile_encoder: ViT-H/14 (Virchow's shape, random weights, bf16) fed by our tile reader from a real slide file
  (decoding, pinned host memory, non-blocking copies, reading overlapped with the GPU): tiles/s per batch size;
- prism: the perceiver on 15,000 tile embeddings: seconds;
- llm_4bit, llm_bf16: MedGemma-4B's shapes with random weights: time to first token with the 256-token image
  block, tokens/s, a cached follow-up's first token, peak memory, memory left after unloading;
- stack_4bit: encoders and the 4-bit model loaded together: peak memory (target <= 8 GB, a 12 GB card);
- train_step: stage 2 in 4-bit with gradient checkpointing: steps/s and peak memory;
- cohort: `cohort embed` on a local Ray, Virchow- and Prism-shaped random weights, 15,000-tile slides:
  slides/hour per GPU (benchmarks/cohort.py; target >= 300);
- evidence_map: an occlusion map (K=64, finer pass, 8 random orders) of an answer about 15,000 tiles, with
  Prism's shape and MedGemma-shaped 4-bit weights: seconds (target <= 3 s);
--smoke runs every part at tiny sizes on the CPU (CI runs it, so the script cannot rot).
Usage: python -m benchmarks.gpu_suite --out DIR [--smoke] [--slide SVS] [--part NAME ...]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from antoni_bridge.gpu import gpu_memory, release_unused

Figures = dict[str, Any]
GB = 1e9


@dataclass(frozen=True)
class Sizes:
    """How big each part runs: the real shapes on a GPU, toy ones for --smoke."""

    vit_args: dict[str, Any]
    batch_sizes: tuple[int, ...]
    tile_seconds: float
    prism_tiles: int
    prism_args: dict[str, Any]
    new_tokens: int
    repeats: int
    train_steps: int


FULL = Sizes({}, (64, 128, 256), 15.0, 15_000, {}, 64, 3, 3)
SMOKE = Sizes(
    {"depth": 1, "embed_dim": 64, "num_heads": 2, "mlp_ratio": 4.0}, (4,), 0.5, 200,
    {"latent_seq": 16, "latent_dim": 64, "context_dim": 128, "perceiver_depth": 2, "transformer_depth": 1},
    4, 1, 1,
)  # fmt: skip


class Context:
    """What the parts share: sizes, the device, a scratch folder, the demo weights and the slide."""

    def __init__(self, sizes: Sizes, device: torch.device, scratch: Path, slide: Path | None) -> None:
        from antoni_bridge.demo_assets import write_demo_weights

        self.sizes, self.device, self.scratch = sizes, device, scratch
        self.weights = write_demo_weights(scratch / "demo-weights")
        self.slide = slide or _demo_slide(scratch)
        self._llm_folder: Path | None = None

    @property
    def smoke(self) -> bool:
        return self.sizes is SMOKE

    def llm_folder(self) -> Path:
        """MedGemma-shaped random weights on a GPU (written once, about 9 GB); the demo's tiny Gemma 3 for --smoke."""
        if self._llm_folder is None:
            from benchmarks.generation import write_medgemma_shaped

            self._llm_folder = (
                self.weights.llm if self.smoke else write_medgemma_shaped(self.scratch / "medgemma", self.weights.llm)
            )
        return self._llm_folder

    def latent_width(self) -> int:
        return self.sizes.prism_args.get("latent_dim", 1280)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_suite.json and gpu_suite.md")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: checks the script, not speed")
    parser.add_argument("--slide", type=Path, help="slide to read tiles from (default: a fresh demo slide)")
    names = [name for name, _ in PARTS]
    parser.add_argument("--part", action="append", choices=names, help="run only this part (repeatable)")
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        parser.exit(1, "error: no CUDA device; the suite measures a GPU.\nhint: --smoke checks the script on the CPU\n")
    report = run(args.smoke, args.slide, args.part)
    write_report(report, args.out)
    failed = [name for name, part in report["parts"].items() if part["status"] == "failed"]
    print(f"wrote {args.out / 'gpu_suite.json'} and gpu_suite.md; failed parts: {', '.join(failed) or 'none'}")


def run(smoke: bool, slide: Path | None = None, only: list[str] | None = None) -> Figures:
    device = torch.device("cpu" if smoke else "cuda")
    report: Figures = {"machine": _machine(device), "smoke": smoke, "parts": {}}
    with tempfile.TemporaryDirectory() as scratch:
        context = Context(SMOKE if smoke else FULL, device, Path(scratch), slide)
        for name, part in [(n, p) for n, p in PARTS if not only or n in only]:
            report["parts"][name] = _timed(part, context)
            print(f"{name}: {report['parts'][name]['status']} ({report['parts'][name]['seconds']:.1f} s)", flush=True)
    return report


def _timed(part: Callable[[Context], Figures], context: Context) -> Figures:
    """One part's figures, or its failure; GPU memory is given back and the peak reset either way."""
    release_unused()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    try:
        result: Figures = {"status": "ok", **part(context)}
    except Exception as exc:  # one broken part must not cost the others their few GPU minutes
        result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    result["seconds"] = time.perf_counter() - start
    release_unused()
    return result


# ----------------------------------------------------------------------------------------------- parts


def memory_plan(context: Context) -> Figures:
    """Parameter bytes of every component at the real shapes, on the meta device (nothing is allocated)."""
    from benchmarks.memory_plan import stack_plan

    return stack_plan()


def tile_encoder(context: Context) -> Figures:
    from antoni_bridge.encoders.pipeline import EmbedSettings, embed_tiles
    from antoni_bridge.encoders.virchow import VIRCHOW_MODEL_ARGS, TileEncoder, build_vit
    from antoni_bridge.features.cache import PartialFeatures
    from antoni_bridge.slides.planning import SlideRequest, plan

    model = build_vit("vit_huge_patch14_224", {**VIRCHOW_MODEL_ARGS, **context.sizes.vit_args})
    dtype = torch.bfloat16 if context.device.type == "cuda" else None
    model = model.to(context.device, dtype or torch.float32).eval()
    encoder = TileEncoder(model, "random", "vit_huge_patch14_224.random", "random", 224, context.device, dtype)
    planned = plan(SlideRequest(context.slide))
    figures: Figures = {"tiles": len(planned.grid), "parameters_m": _parameters(model) / 1e6}
    with planned.slide as slide:
        for batch in context.sizes.batch_sizes:
            settings = EmbedSettings(batch_size=batch, save_every=10**12)  # never saved, so never resumed
            partial = PartialFeatures(context.scratch / "no-partial")
            embed_tiles(slide, planned.grid, encoder, partial, settings=settings)  # warm-up, also of the reader
            figures[f"batch_{batch}_tiles_per_s"] = _rate(
                lambda s=settings, p=partial: embed_tiles(slide, planned.grid, encoder, p, settings=s),
                len(planned.grid),
                context.sizes.tile_seconds,
            )
    figures["best_tiles_per_s"] = max(v for k, v in figures.items() if k.endswith("_tiles_per_s"))
    return figures | _peak()


def prism(context: Context) -> Figures:
    from antoni_bridge.encoders.prism import PerceiverConfig, SlideEncoder

    config = PerceiverConfig(**context.sizes.prism_args)
    encoder = SlideEncoder(config).to(context.device).eval()
    if context.device.type == "cuda":
        encoder.autocast_dtype = torch.bfloat16
    tiles = torch.randn(context.sizes.prism_tiles, config.context_dim)
    encoder.encode(tiles)  # warm-up
    start = time.perf_counter()
    latents = encoder.encode(tiles)
    return {"tiles": len(tiles), "seconds": time.perf_counter() - start, "latents": list(latents.shape)} | _peak()


def llm_4bit(context: Context) -> Figures:
    return _generation(context, "4bit")


def llm_bf16(context: Context) -> Figures:
    return _generation(context, "bf16" if context.device.type == "cuda" else "none")


def _generation(context: Context, quant: str) -> Figures:
    from antoni_bridge.model.antoni import AntoniModel
    from antoni_bridge.model.config import AntoniConfig
    from antoni_bridge.model.llm import load_llm
    from benchmarks.generation import generation_figures

    folder = context.llm_folder()
    baseline = _allocated_gb()
    config = AntoniConfig(projector_input_dim=context.latent_width())
    model = AntoniModel(config, load_llm(folder, context.device, quant))
    figures = generation_figures(model, context.latent_width(), context.sizes.new_tokens, context.sizes.repeats)
    figures |= _peak() | {"quant": model.loaded.quant}
    del model
    release_unused()
    return figures | {"after_unload_gb_above_baseline": _allocated_gb() - baseline}


def stack_4bit(context: Context) -> Figures:
    """The daemon's whole stack at once: tile encoder, slide encoder and the 4-bit model, as `serve` loads it."""
    from antoni_bridge.encoders.prism import PerceiverConfig, SlideEncoder
    from antoni_bridge.encoders.virchow import VIRCHOW_MODEL_ARGS, build_vit
    from antoni_bridge.model.antoni import AntoniModel
    from antoni_bridge.model.config import AntoniConfig
    from antoni_bridge.model.llm import load_llm
    from benchmarks.memory_plan import bytes_per_device

    dtype = torch.bfloat16 if context.device.type == "cuda" else torch.float32
    vit = build_vit("vit_huge_patch14_224", {**VIRCHOW_MODEL_ARGS, **context.sizes.vit_args}).to(context.device, dtype)
    perceiver = SlideEncoder(PerceiverConfig(**context.sizes.prism_args)).to(context.device, dtype)
    llm = load_llm(context.llm_folder(), context.device, "4bit")
    model = AntoniModel(AntoniConfig(projector_input_dim=context.latent_width()), llm)
    model.park_view_weights()
    parts = {"tile_encoder": vit, "slide_encoder": perceiver, "antoni": model}
    figures: Figures = {name: bytes_per_device(module) for name, module in parts.items()}
    return figures | _peak()


def train_step(context: Context) -> Figures:
    """Stage 2 in 4-bit with gradient checkpointing (the published recipe on a single GPU)."""
    from benchmarks.training import one_run_figures, training_cases

    llm = context.llm_folder()
    setup = {"llm": str(llm), "weights": None, "quant": "4bit", "batch_size": 2 if context.smoke else 16}
    config = training_cases(context.scratch / "train", setup, context.latent_width(), 40, context.sizes.train_steps)
    return one_run_figures(config(2, checkpointing=True)) | _peak()


def evidence_map(context: Context) -> Figures:
    """An occlusion map (K=64, 8 random orders, finer pass) of a one-sentence answer about a 15,000-tile slide:
    Prism's perceiver at its real shape (bf16 autocast) and MedGemma-shaped random weights in 4-bit, as the
    daemon runs them by default. Target: <= 3 s on a GPU."""
    from antoni_bridge.encoders.prism import PerceiverConfig, SlideEncoder
    from antoni_bridge.engine.evidence import MaskedScorer, occlusion_map
    from antoni_bridge.model.antoni import AntoniModel
    from antoni_bridge.model.config import AntoniConfig
    from antoni_bridge.model.llm import load_llm

    encoder = SlideEncoder(PerceiverConfig(**{**context.sizes.prism_args, "latent_seq": 512})).to(context.device)
    if context.device.type == "cuda":
        encoder.to(torch.bfloat16).autocast_dtype = torch.bfloat16
    quant = "4bit" if context.device.type == "cuda" else "none"
    model = AntoniModel(
        AntoniConfig(projector_input_dim=context.latent_width()), load_llm(context.llm_folder(), context.device, quant)
    )
    tiles = context.sizes.prism_tiles
    features = torch.randn(tiles, encoder.config.context_dim).numpy()
    side = int(tiles**0.5) + 1
    coords = np.stack([np.arange(tiles) % side, np.arange(tiles) // side], axis=1) * 224
    question = [{"role": "user", "content": "Is there DAB (brown) staining?"}]
    answer = "Yes, two pieces of tissue show DAB staining."
    groups, orders = (8, 1) if context.smoke else (64, 8)  # the smoke run checks the script, quickly
    figures: Figures = {"tiles": tiles, "groups": groups, "random_orders": orders}
    masks: list[int] = []  # tile masks scored per stage

    def step(stage: str, done: int, total: int) -> None:
        if done == 0:
            masks.append(total)

    for run in ("map",) if context.smoke else ("warm_up", "map"):
        masks.clear()
        score = MaskedScorer(encoder.eval(), model, features, question, answer, step)
        start = time.perf_counter()
        mapped = occlusion_map(score, coords, groups, orders)
        if context.device.type == "cuda":
            torch.cuda.synchronize()
        figures[f"{run}_s"] = time.perf_counter() - start
    answer_tokens = len(model.tokenizer(answer, add_special_tokens=False)["input_ids"])
    return figures | {"answer_tokens": answer_tokens, "masks": sum(masks), "gap": mapped.faithfulness.gap} | _peak()


def cohort(context: Context) -> Figures:
    from benchmarks.cohort import suite_part

    return suite_part(context)


PARTS: list[tuple[str, Callable[[Context], Figures]]] = [
    ("memory_plan", memory_plan),
    ("tile_encoder", tile_encoder),
    ("prism", prism),
    ("llm_4bit", llm_4bit),
    ("llm_bf16", llm_bf16),
    ("stack_4bit", stack_4bit),
    ("train_step", train_step),
    ("evidence_map", evidence_map),
    ("cohort", cohort),
]


# ----------------------------------------------------------------------------------------------- report


def write_report(report: Figures, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_suite.json").write_text(json.dumps(report, indent=2, default=str))
    rows = [f"# GPU suite on {report['machine']['device']}{' (smoke: toy sizes)' if report['smoke'] else ''}", ""]
    rows += ["| part | status | seconds | figures |", "|---|---|---|---|"]
    for name, part in report["parts"].items():
        shown = {k: v for k, v in part.items() if k not in ("status", "seconds", "traceback")}
        rows.append(f"| {name} | {part['status']} | {part['seconds']:.1f} | {_flat(shown)} |")
    (out / "gpu_suite.md").write_text("\n".join(rows) + "\n")


def _flat(values: Figures, prefix: str = "") -> str:
    items = []
    for key, value in values.items():
        if isinstance(value, dict):
            items.append(_flat(value, f"{prefix}{key}."))
        else:
            items.append(f"{prefix}{key} {value:.3g}" if isinstance(value, float) else f"{prefix}{key} {value}")
    return "; ".join(items).replace("|", "/")


# ----------------------------------------------------------------------------------------------- helpers


def _machine(device: torch.device) -> Figures:
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.processor() or 'unknown'})"
    return {"device": name, "torch": torch.__version__, "python": platform.python_version()} | {
        "transformers": _version("transformers"),
        "bitsandbytes": _version("bitsandbytes"),
    }


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def _demo_slide(scratch: Path) -> Path:
    from antoni_bridge.slides.demo import write_demo_slide

    path = scratch / "demo.svs"
    write_demo_slide(path, progress=False)
    return path


def _rate(step: Callable[[], object], items: int, seconds: float) -> float:
    start, count = time.perf_counter(), 0
    while count == 0 or time.perf_counter() - start < seconds:
        step()
        count += items
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return count / (time.perf_counter() - start)


def _parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _allocated_gb() -> float:
    memory = gpu_memory()
    return memory["allocated_mib"] * 2**20 / GB if memory else 0.0


def _peak() -> Figures:
    memory = gpu_memory()
    return {"peak_gb": memory["peak_mib"] * 2**20 / GB} if memory else {}


if __name__ == "__main__":
    main()
