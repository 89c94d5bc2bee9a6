"""The engine as front ends call it: a real Engine on the demo weights, real slides, a real feature cache."""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from antoni_bridge.demo_assets import DemoWeights, write_demo_weights
from antoni_bridge.engine import (
    Cancelled,
    Engine,
    EngineSettings,
    FeaturesSource,
    GenerationOptions,
    ModelChoice,
    SlideSource,
)
from antoni_bridge.errors import BridgeError
from antoni_bridge.slides.regions import Region

QUESTION = [{"role": "user", "content": "What organ is this?"}]
SHORT = GenerationOptions(max_new_tokens=4)
REGION = Region.rectangle(1500, 1500, 2500, 2500)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> DemoWeights:
    return write_demo_weights(tmp_path_factory.mktemp("demo-weights"))


def _choice(weights: DemoWeights) -> ModelChoice:
    return ModelChoice(str(weights.tile_encoder), str(weights.slide_encoder), weights.antoni, demo=True)


@pytest.fixture
def engine(weights: DemoWeights, tmp_path: Path) -> Engine:
    return Engine(_choice(weights), tmp_path / "cache")


def _latents_file(tmp_path: Path, seed: int = 0) -> Path:
    path = tmp_path / "latents.pt"
    torch.save(torch.randn(513, 64, generator=torch.Generator().manual_seed(seed)), path)
    return path


def test_a_missing_features_file_is_refused_before_any_model_loads(engine: Engine, tmp_path: Path) -> None:
    with pytest.raises(BridgeError, match="No features file at"):
        engine.ask(FeaturesSource(tmp_path / "none.pt"), QUESTION)
    wrong = tmp_path / "wrong.pt"
    torch.save(torch.randn(513, 65), wrong)
    with pytest.raises(BridgeError, match="have shape"):
        engine.ask(FeaturesSource(wrong), QUESTION)
    assert engine.loaded() == []


def test_an_answer_carries_its_provenance(engine: Engine, weights: DemoWeights, tmp_path: Path) -> None:
    assert engine.provenance()["weights_sha256"] is None  # not hashed until the model loads
    answer = engine.ask(FeaturesSource(_latents_file(tmp_path)), QUESTION, SHORT)
    provenance = answer.provenance
    weight_file = next(f for f in weights.antoni.iterdir() if f.suffix in (".safetensors", ".bin"))
    assert provenance["weights_sha256"] == hashlib.sha256(weight_file.read_bytes()).hexdigest()
    assert provenance["weights"] == str(weights.antoni) and provenance["demo"] is True
    assert provenance["adapter"] is True and provenance["decoding"] == asdict(SHORT)
    assert provenance["stop_reason"] == answer.stop_reason and answer.stop_reason in ("stop", "length")
    assert provenance["tile_encoder"] == str(weights.tile_encoder) and provenance["antoni_bridge"]
    assert answer.latents_from == "file" and len(answer.token_ids) <= 4
    status = engine.status()
    assert status["device"] == "cpu" and status["loaded"] == ["model"] and status["gpu_memory"] is None
    assert status["provenance"]["weights_sha256"] == provenance["weights_sha256"]


def test_a_slide_is_embedded_once_then_answered_from_memory_then_from_the_cache_alone(
    weights: DemoWeights, demo_20x: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = SlideSource(demo_20x, REGION)
    first = Engine(_choice(weights), tmp_path / "cache")
    stages: list[str] = []
    computed = first.ask(source, QUESTION, SHORT, on_progress=lambda p: stages.append(p.stage))
    assert computed.latents_from == "computed" and not computed.cache_hit and computed.tiles
    assert {"loading", "tissue", "tile-embedding", "slide-encoding", "generating"} <= set(stages)
    assert first.ask(source, QUESTION, SHORT).latents_from == "memory"

    import antoni_bridge.features.cache as cache_module
    import antoni_bridge.slides.planning as planning

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a hit of an unchanged slide opened the slide or read its tile features")

    monkeypatch.setattr(planning, "Slide", refuse)  # plan() opens slides through this name
    monkeypatch.setattr(cache_module, "read_feature_file", refuse)  # a cache entry whole, features and all
    again = Engine(_choice(weights), tmp_path / "cache")  # a new process: nothing in memory
    hit = again.ask(source, QUESTION, SHORT)
    assert hit.latents_from == "disk" and hit.cache_hit and hit.tiles == computed.tiles
    assert hit.token_ids == computed.token_ids, "the same latents and greedy decoding give the same answer"


def test_a_touched_slide_is_opened_again_and_still_found_in_the_cache(
    weights: DemoWeights, demo_40x: tuple[Path, object], tmp_path: Path
) -> None:
    slide = tmp_path / "slide.svs"
    slide.write_bytes(demo_40x[0].read_bytes())
    source = SlideSource(slide, REGION)
    Engine(_choice(weights), tmp_path / "cache").embed(source)
    stat = slide.stat()
    os.utime(slide, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same content, another identity
    stages: list[str] = []
    again = Engine(_choice(weights), tmp_path / "cache").embed(source, on_progress=lambda p: stages.append(p.stage))
    assert "tissue" in stages and "tile-embedding" not in stages  # planned again, embedded from the cache
    assert again.latents_from == "disk" and again.cache_hit


def test_score_embed_and_forget(engine: Engine, demo_20x: Path) -> None:
    source = SlideSource(demo_20x, REGION)
    embedded = engine.embed(source)
    assert embedded.latents_from == "computed" and embedded.latents_shape == [513, 64]
    scores = engine.score(source, "Which organ?", ["lung", "skin"])
    assert scores.best in ("lung", "skin") and len(scores.mean_nll) == 2 and scores.cache_hit
    assert scores.provenance["weights_sha256"]
    engine.ask(source, QUESTION, SHORT)
    assert engine.model.prefixes.entries, "the conversation's KV cache is kept for a follow-up"
    assert engine.forget(demo_20x) == {"memory": 1, "disk": 1}
    assert not engine.model.prefixes.entries, "forgetting a slide drops its KV cache too"
    assert engine.embed(source).latents_from == "computed"


def test_cancel_between_tile_batches_and_between_tokens(engine: Engine, demo_20x: Path, tmp_path: Path) -> None:
    with pytest.raises(Cancelled):
        engine.embed(SlideSource(demo_20x), cancelled=lambda: True)
    assert len(engine.memory) == 0
    checks: list[int] = []

    def cancel_at_the_third_token() -> bool:
        checks.append(1)
        return len(checks) > 3  # once before generating, then before each token

    with pytest.raises(Cancelled):
        engine.ask(
            FeaturesSource(_latents_file(tmp_path, seed=7)),
            QUESTION,
            GenerationOptions(max_new_tokens=500),
            cancelled=cancel_at_the_third_token,
        )
    assert len(checks) == 4


def test_settings_take_effect(weights: DemoWeights, demo_20x: Path, tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    try:
        engine = Engine(_choice(weights), tmp_path / "cache", (), EngineSettings("bf16", batch_size=7, threads=1))
        done: list[int] = []
        engine.embed(
            SlideSource(demo_20x),  # the whole slide: 51 tiles, more than a few batches of 7
            on_progress=lambda p: done.append(p.done) if p.stage == "tile-embedding" else None,
        )
        assert done[1] == 7 and all(d % 7 == 0 for d in done[:-1]), done  # 7 tiles a batch
        assert torch.get_num_threads() == 1
        engine.load(["model"])
        assert engine.model.loaded.quant == "bf16"  # --precision bf16 with --quant auto: bf16 weights
    finally:
        torch.set_num_threads(threads)
    plain = Engine(_choice(weights), tmp_path / "cache")
    plain.load(["model"])
    assert plain.model.loaded.quant == "none"  # auto on the CPU: fp32


def test_options_from_a_request_fill_in_the_defaults() -> None:
    from antoni_bridge.engine import DEFAULT_DECODING, options_from

    assert options_from({}) == DEFAULT_DECODING and DEFAULT_DECODING.greedy and DEFAULT_DECODING.max_new_tokens == 1024
    assert options_from({"max_new_tokens": 6.0, "top_k": None}) == GenerationOptions(max_new_tokens=6)
    with pytest.raises(BridgeError, match="Unknown decoding option 'beam'"):
        options_from({"beam": 3})


def test_serve_options_reach_the_engine(tmp_path: Path) -> None:
    from antoni_bridge.cli import build_parser
    from antoni_bridge.commands.serve import engine_for

    args = build_parser().parse_args(
        ["serve", "--demo", "--device", "cpu", "--precision", "fp32", "--batch-size", "7", "--threads", "1"]
    )
    engine = engine_for(args)
    assert engine.settings == EngineSettings("fp32", 7, 1) and engine.choice.demo
    assert engine.settings.model_quant(engine.choice.quant) == "none"  # fp32 with --quant auto
