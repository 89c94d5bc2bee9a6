"""GPU readiness checked on the CPU: the GPU suite's smoke run, the memory plan, and the memory-saving placements
(original embedding parked off the GPU, encoders stored in bf16) that the 12 GB target relies on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from antoni_bridge.demo_assets import DemoWeights, write_demo_weights
from antoni_bridge.encoders.prism import PerceiverConfig, SlideEncoder
from antoni_bridge.model.antoni import AntoniModel
from antoni_bridge.model.generation import GenerationOptions
from benchmarks.memory_plan import bytes_per_device, stack_plan

ROOT = Path(__file__).resolve().parents[1]
QUESTION = [{"role": "user", "content": "What organ is this tissue from?"}]


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> DemoWeights:
    return write_demo_weights(tmp_path_factory.mktemp("demo-weights"))


def test_gpu_suite_smoke_runs_every_part(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_suite", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_suite.json").read_text())
    statuses = {name: part["status"] for name, part in report["parts"].items()}
    assert statuses == {
        "memory_plan": "ok",
        "tile_encoder": "ok",
        "prism": "ok",
        "llm_4bit": "ok",
        "llm_bf16": "ok",
        "stack_4bit": "ok",
        "train_step": "ok",
        "evidence_map": "ok",
        "cohort": "ok",
    }, {name: part.get("error") for name, part in report["parts"].items()}
    assert report["parts"]["llm_4bit"]["quant"] == "4bit"
    assert "| llm_4bit | ok |" in (tmp_path / "gpu_suite.md").read_text()


def test_gpu_suite_refuses_to_measure_without_a_gpu(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_suite", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True
    )
    assert run.returncode == 1
    assert "no CUDA device" in run.stderr and "--smoke" in run.stderr and "Traceback" not in run.stderr


def test_memory_plan_fits_a_12_gb_card_only_with_the_original_embedding_parked() -> None:
    plan = stack_plan()
    assert plan["original_embedding_gb"] == pytest.approx(262208 * 2560 * 2 / 1e9)
    assert plan["gpu_total_as_loaded_gb"] - plan["gpu_total_parked_gb"] == pytest.approx(plan["original_embedding_gb"])
    assert plan["gpu_total_parked_gb"] <= 8.0 - 1.5  # room left for the KV cache and activations
    assert plan["tile_encoder_gb"] == pytest.approx(0.632e9 * 2 / 1e9, rel=0.02)  # Virchow: 632 M parameters


def test_parking_moves_the_tied_original_embedding_once_and_slide_mode_never_reads_it(weights: DemoWeights) -> None:
    """On the CPU `park_view_weights` does nothing, so park on the meta device: every byte left behind would fail
    loudly if slide mode read it."""
    model = AntoniModel.load(weights.antoni)
    latents = torch.randn(513, model.config.projector_input_dim, generator=torch.Generator().manual_seed(0))
    options = GenerationOptions(max_new_tokens=6)
    before = model.answer(latents, QUESTION, options).token_ids
    total = bytes_per_device(model)["cpu"]
    original = model.llm.get_input_embeddings().original_module.weight
    model._move_view_weights(torch.device("meta"))
    placed = bytes_per_device(model)
    assert placed["meta"] == pytest.approx(original.numel() * original.element_size() / 1e9)
    assert placed["cpu"] + placed["meta"] == pytest.approx(total)
    assert model.answer(latents, QUESTION, options).token_ids == before


def test_slide_encoder_stored_in_bf16_gives_the_fp32_latents() -> None:
    """On a GPU the encoders are stored in their autocast dtype (half the memory); the perceiver must run with bf16
    weights under autocast. Checked with the CPU's bf16 autocast."""
    torch.manual_seed(0)
    config = PerceiverConfig(latent_seq=8, latent_dim=64, context_dim=32, perceiver_depth=2, transformer_depth=1)
    encoder = SlideEncoder(config).eval()
    tiles = torch.randn(50, 32)
    reference = encoder.encode(tiles)
    encoder.to(torch.bfloat16).autocast_dtype = torch.bfloat16
    stored_bf16 = encoder.encode(tiles)
    assert stored_bf16.dtype == torch.float32 and torch.isfinite(stored_bf16).all()
    torch.testing.assert_close(stored_bf16, reference, atol=0.1, rtol=0.1)
