"""The demo task and the shipped demo weights: what the questions' answers are, and that the weights have
learned them from slide pixels (on slides the training never saw, where untrained weights fail)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from antoni_bridge.demo import REGION
from antoni_bridge.demo_assets import SHIPPED, DemoWeights, demo_weights
from antoni_bridge.demo_task import QUESTIONS, SlideFacts, answers, description, labels, phrases
from antoni_bridge.encoders.pipeline import Encoders, embed_slide
from antoni_bridge.features.cache import FeatureCache
from antoni_bridge.model.antoni import AntoniModel
from antoni_bridge.model.generation import GenerationOptions
from antoni_bridge.slides.demo import DemoLayout, demo_layout, write_demo_slide
from antoni_bridge.slides.planning import SlideRequest
from antoni_bridge.slides.regions import Region
from antoni_bridge.train.demo_weights import MADE_FILE
from antoni_bridge.train.evaluate import named_option
from tests.conftest import run_cli

UNSEEN_SEEDS = range(900_001, 900_009)  # training used 1.., held-out eval 500_001..: these slides are new


def test_answers_follow_the_pieces_and_a_region_keeps_only_its_own() -> None:
    layout = demo_layout(10_000, 7_500)  # the demo slide: two DAB pieces and one H&E piece
    slide, region = SlideFacts.of(layout), SlideFacts.of(layout, REGION)
    assert (slide.he, slide.dab, slide.stain) == (1, 2, "both")
    assert (region.he, region.dab, region.stain) == (0, 1, "DAB")
    assert answers(slide) == {
        "stain": "Both H&E and immunohistochemistry (DAB).",
        "dab": "Yes.",
        "count": "Three pieces.",
        "describe": "Three pieces of tissue: one H&E-stained, two with DAB staining.",
    }
    assert description(region) == "One piece of tissue with DAB staining (immunohistochemistry)."
    case = labels("k", SlideFacts(0, 2))
    assert {name: q["answer"] for name, q in case["questions"].items()} == {
        "stain": "Immunohistochemistry (DAB)",
        "dab": "Yes",
        "count": "Two pieces",
    }
    assert all(q["answer"] in q["options"] for q in case["questions"].values())


def test_the_grader_names_whole_options_only() -> None:
    stains = ("H&E", "Immunohistochemistry (DAB)", "Both H&E and immunohistochemistry (DAB)")
    assert named_option("Both H&E and immunohistochemistry (DAB).", stains) == stains[2]
    assert named_option("immunohistochemistry (DAB).", stains) == stains[1]
    assert named_option("Not sure.", ("Yes", "No")) is None
    assert named_option("No.", ("Yes", "No")) == "No"


def test_layouts_are_seeded_and_vary() -> None:
    first, again = demo_layout(10_000, 7_500, seed=3), demo_layout(10_000, 7_500, seed=3)
    assert first.pieces == again.pieces and (first.labels == again.labels).all()
    counts = {len(demo_layout(10_000, 7_500, seed=s).pieces) for s in range(40)}
    stains = {SlideFacts.of(demo_layout(10_000, 7_500, seed=s)).stain for s in range(40)}
    assert counts == {1, 2, 3, 4} and stains == {"H&E", "DAB", "both"}


def test_the_demo_tokenizer_spells_the_task_in_whole_words() -> None:
    model_folder = demo_weights().llm
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_folder)
    for text in phrases():
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
        assert len(ids) <= len(text.split()) * 2 + 2, (text, tokenizer.convert_ids_to_tokens(ids))


def test_the_shipped_weights_say_how_they_were_made() -> None:
    made = json.loads((SHIPPED / MADE_FILE).read_text())
    assert made["command"].startswith("antoni-bridge make-demo-weights") and made["seed"] == 0
    model = next(row for row in made["held_out"] if row["variant"] == "ANTONI-Alpha")
    controls = [row for row in made["held_out"] if row["variant"].startswith(("no image", "shuffled"))]
    assert model["stain_accuracy"] >= 0.9 and model["dab_accuracy"] >= 0.9 and len(controls) == 2
    assert all(row["stain_accuracy"] < model["stain_accuracy"] - 0.3 for row in controls)
    size = sum(p.stat().st_size for p in SHIPPED.rglob("*") if p.is_file())
    assert size < 6 * 2**20, f"the shipped demo weights grew to {size / 2**20:.1f} MB"


@pytest.fixture(scope="module")
def unseen(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, DemoLayout]]:
    folder = tmp_path_factory.mktemp("unseen")
    return [(folder / f"{s}.svs", write_demo_slide(folder / f"{s}.svs", seed=s, progress=False)) for s in UNSEEN_SEEDS]


def _grade(weights: DemoWeights, slides: list[tuple[Path, DemoLayout]], cache: Path) -> dict[str, float]:
    """Each slide's stain and DAB answer from `weights`, graded against its layout."""
    encoders = Encoders.load(str(weights.tile_encoder), str(weights.slide_encoder), device="cpu")
    model = AntoniModel.load(weights.antoni, device="cpu", quant="none")
    right = {"stain": 0, "dab": 0}
    for path, layout in slides:
        latents = torch.from_numpy(embed_slide(SlideRequest(path), encoders, FeatureCache(cache)).data.latents)
        truth = answers(SlideFacts.of(layout))
        for name in right:
            asked = [{"role": "user", "content": QUESTIONS[name]}]
            said = model.answer(latents, asked, GenerationOptions(max_new_tokens=24)).text
            right[name] += said.strip() == truth[name]
    return {name: count / len(slides) for name, count in right.items()}


@pytest.mark.slow
def test_the_demo_weights_read_stain_and_dab_from_slides_they_never_saw(
    unseen: list[tuple[Path, DemoLayout]], untrained_weights: DemoWeights, tmp_path: Path
) -> None:
    trained = _grade(demo_weights(), unseen, tmp_path / "trained")
    assert trained["stain"] >= 0.85 and trained["dab"] >= 0.85, trained
    untrained = _grade(untrained_weights, unseen, tmp_path / "untrained")
    assert untrained["stain"] <= 0.5 and untrained["dab"] <= 0.5, untrained


@pytest.mark.slow
def test_a_region_is_answered_from_its_own_piece(tmp_path: Path) -> None:
    slide = tmp_path / "demo.svs"
    write_demo_slide(slide, progress=False)
    weights = demo_weights()
    encoders = Encoders.load(str(weights.tile_encoder), str(weights.slide_encoder), device="cpu")
    model = AntoniModel.load(weights.antoni, device="cpu", quant="none")
    cache = FeatureCache(tmp_path / "cache")
    region = embed_slide(SlideRequest(slide, region=Region.rectangle(*REGION)), encoders, cache)
    asked = [{"role": "user", "content": QUESTIONS["stain"]}]
    said = model.answer(torch.from_numpy(region.data.latents), asked, GenerationOptions(max_new_tokens=24)).text
    assert said.strip() == "Immunohistochemistry (DAB).", said  # the whole slide has H&E too; not the region


@pytest.mark.skipif(os.environ.get("ANTONI_BRIDGE_REMAKE_DEMO") != "1", reason="about 30 minutes of CPU")
@pytest.mark.timeout(3600)  # past the suite's 600 s per test
def test_remaking_the_demo_weights_reaches_the_shipped_accuracy(tmp_path: Path) -> None:
    made = run_cli("make-demo-weights", str(tmp_path / "remade"), "--seed", "0", timeout=3600)
    assert made.returncode == 0, made.stderr[-2000:]
    shipped = json.loads((SHIPPED / MADE_FILE).read_text())["held_out"]
    remade = json.loads((tmp_path / "remade" / MADE_FILE).read_text())["held_out"]
    for old, new in zip(shipped, remade, strict=True):
        for key in ("stain_accuracy", "dab_accuracy", "count_accuracy"):
            assert new[key] == pytest.approx(old[key], abs=0.05), (old["variant"], key, old, new)
