"""Evidence maps and image reliance (issue 16) on the shipped, learned demo weights: the map equals asking
again without a group's tiles, it points at the piece that decides the answer on layouts training never
saw, and the `explain` job runs through a real daemon with progress, cancel and refusals."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from antoni_bridge.client import Client
from antoni_bridge.demo_assets import demo_weights
from antoni_bridge.demo_task import QUESTIONS
from antoni_bridge.engine import Engine, EngineSettings, FeaturesSource, GenerationOptions, ModelChoice, SlideSource
from antoni_bridge.engine.evidence import MaskedScorer, curve_points, faithfulness
from antoni_bridge.engine.groups import group_masks, tile_groups
from antoni_bridge.errors import BridgeError
from antoni_bridge.slides.demo import DemoLayout, write_demo_slide
from tests.conftest import serve_demo

DAB = [{"role": "user", "content": QUESTIONS["dab"]}]
STAIN = [{"role": "user", "content": QUESTIONS["stain"]}]
SHORT = GenerationOptions(max_new_tokens=24)
# Slides for the pointing game: seeds far from the training's (1..120) and held-out evaluation's
# (500,001..500,040) of the shipped weights (MADE.json: seed 0); each holds one DAB and two H&E pieces.
POOL_SEEDS = (7_000_000, 7_000_011, 7_000_013)
LAYOUTS, POINTING_GROUPS, CHECKED_LAYOUTS, RANDOM_ORDERS = 50, 8, 10, 2


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """The shipped, learned demo weights, in-process; one thread, so a loaded test machine is not oversubscribed."""
    threads = torch.get_num_threads()
    weights = demo_weights()
    choice = ModelChoice(str(weights.tile_encoder), str(weights.slide_encoder), weights.antoni, demo=True)
    yield Engine(choice, tmp_path_factory.mktemp("cache"), settings=EngineSettings(threads=1))
    torch.set_num_threads(threads)


def test_tile_groups_are_compact_balanced_and_deterministic() -> None:
    coords = np.random.default_rng(0).integers(0, 50_000, (1000, 2))
    labels = tile_groups(coords, 64)
    assert np.array_equal(labels, tile_groups(coords.copy(), 64))
    counts = np.bincount(labels)
    assert len(counts) == 64 and counts.max() - counts.min() <= 1
    spread = np.mean([np.ptp(coords[labels == g], axis=0).max() for g in range(64)])
    assert spread < 50_000 / 4, "each group is a small patch of the slide, not scattered over it"
    assert tile_groups(coords[:5], 64).max() == 4, "fewer groups than asked when there are fewer tiles"
    assert group_masks(labels, [3]).sum() == 1000 - counts[3]


def test_a_groups_evidence_equals_the_drop_when_asked_again_without_its_tiles(
    engine: Engine, demo_40x: tuple[Path, DemoLayout], tmp_path: Path
) -> None:
    """The map's numbers against the ordinary path: latents made by the slide encoder from the tiles that
    remain (as embedding does), written to a features file, scored by the `score` job."""
    source = SlideSource(demo_40x[0])
    answer = engine.ask(source, STAIN, SHORT).text
    explained = engine.explain(source, STAIN, answer, groups=8, random_orders=1)
    tiles = engine.tile_features(source)
    answer_tokens = len(engine.model.tokenizer(answer, add_special_tokens=False)["input_ids"])

    def asked_again(keep: np.ndarray | None) -> float:
        """log p(answer) summed over its tokens, with only the tiles `keep` (all when None)."""
        if keep is None:
            return -engine.score(source, QUESTIONS["stain"], [answer]).mean_nll[0] * answer_tokens
        path = tmp_path / f"latents-{np.flatnonzero(~keep)[0]}.pt"
        torch.save(engine.encoders.slide.encode(torch.from_numpy(tiles.features[keep])), path)
        return -engine.score(FeaturesSource(path), QUESTIONS["stain"], [answer]).mean_nll[0] * answer_tokens

    full = asked_again(None)
    assert explained.log_likelihood == pytest.approx(full, abs=1e-4)
    values, labels = np.array(explained.values), np.array(explained.group_of)
    plain = [g for g in range(explained.groups) if g not in explained.refined]
    for group in plain[:2]:
        assert np.allclose(values[labels == group], full - asked_again(labels != group), atol=1e-4)
    refined = explained.refined[0]  # the finer pass: each top group in 4 compact sub-groups
    members = np.flatnonzero(labels == refined)
    part = members[tile_groups(tiles.coords[members], 4) == 0]
    keep = np.ones(len(labels), dtype=bool)
    keep[part] = False
    assert np.allclose(values[part], full - asked_again(keep), atol=1e-4)
    assert explained.tile_size == tiles.tile_size and explained.coords == tiles.coords.tolist()


@pytest.fixture(scope="module")
def pieces(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The tissue pieces of slides training never saw, embedded once: (stain, tile coords about the piece's
    centre, tile features); layouts are made of them without embedding anything again."""
    folder = tmp_path_factory.mktemp("pointing")
    found = []
    for seed in POOL_SEEDS:
        layout = write_demo_slide(folder / f"{seed}.svs", seed=seed, progress=False)
        tiles = engine.tile_features(SlideSource(folder / f"{seed}.svs"))
        centres = np.array([piece.centre for piece in layout.pieces])
        middles = tiles.coords + tiles.tile_size / 2
        owner = np.argmin(((middles[:, None] - centres[None]) ** 2).sum(-1), axis=1)
        for index, piece in enumerate(layout.pieces):
            snapped = np.round(centres[index] / tiles.tile_size) * tiles.tile_size
            found.append((piece.stain, tiles.coords[owner == index] - snapped, tiles.features[owner == index]))
    return found


def _layout(pieces: list, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One DAB piece among one or two H&E pieces, each turned by a random quarter turn and placed apart at
    random on a 10,000 x 7,500 px slide: tile coords, features, and which tiles are the DAB piece's."""
    dab = [p for p in pieces if p[0] == "DAB"]
    he = [p for p in pieces if p[0] == "H&E"]
    chosen = [dab[rng.integers(len(dab))]] + [he[i] for i in rng.choice(len(he), int(rng.integers(1, 3)), False)]
    coords, features, is_dab, placed = [], [], [], []
    for index, (_, relative, feats) in enumerate(chosen):
        for _ in range(int(rng.integers(4))):
            relative = np.stack([-relative[:, 1], relative[:, 0]], axis=1)
        radius = np.abs(relative).max() + 224
        for _ in range(1000):
            centre = rng.uniform([radius, radius], [10_000 - radius, 7_500 - radius])
            if all(np.hypot(*(centre - c)) > radius + r for c, r in placed):
                break
        placed.append((centre, radius))
        coords.append(relative + np.round(centre / 224) * 224)
        features.append(feats)
        is_dab.append(np.full(len(relative), index == 0))
    return np.concatenate(coords), np.concatenate(features), np.concatenate(is_dab)


def test_the_map_points_at_the_dab_piece_on_layouts_training_never_saw(engine: Engine, pieces: list) -> None:
    """The pointing game: "Is there DAB staining?" answered "Yes." is decided by the one DAB piece; the map's
    top group (of 8; small K keeps the test fast) must lie on it (most of its tiles) in >= 80% of 50 layouts,
    and on the first 10 the deletion curve in the map's order must beat random orders."""
    engine.load()
    rng = np.random.default_rng(2026)
    hits, gaps = 0, []
    for index in range(LAYOUTS):
        coords, features, is_dab = _layout(pieces, rng)
        score = MaskedScorer(engine.encoders.slide, engine.model, features, DAB, "Yes.", lambda *_: None)
        labels = tile_groups(coords, POINTING_GROUPS)
        keep = np.vstack([np.ones((1, len(labels)), dtype=bool), group_masks(labels, np.arange(labels.max() + 1))])
        scores = score(keep, "occlusion")
        drops = scores[0] - scores[1:]
        hits += bool(is_dab[labels == int(np.argmax(drops))].mean() > 0.5)
        if index < CHECKED_LAYOUTS:
            gaps.append(faithfulness(score, labels, drops, float(scores[0]), RANDOM_ORDERS).gap)
    print(f"pointing game: {hits}/{LAYOUTS}; deletion gap per layout {np.round(gaps, 4).tolist()}")
    assert hits >= 0.8 * LAYOUTS
    assert np.mean(gaps) > 0 and np.mean(np.array(gaps) > 0) >= 0.5


def test_curve_points_never_drop_every_group() -> None:
    assert curve_points(64) == [6, 16, 32, 48]
    assert curve_points(2) == [1]


def test_reliance_comes_with_every_answer_and_flags_one_the_image_does_not_support(
    engine: Engine, demo_40x: tuple[Path, DemoLayout]
) -> None:
    """The test slide has DAB pieces: "Yes." relies on it; "No." is likelier without any image."""
    source = SlideSource(demo_40x[0])
    asked = engine.ask(source, DAB, SHORT)
    assert asked.text == "Yes." and asked.reliance is not None
    assert asked.reliance["flagged"] is False and asked.reliance["score"] > 0
    latents = engine.latents(source)
    contradicted = engine.reliance(latents, DAB, "No.")
    assert contradicted["flagged"] is True and contradicted["with_slide"] < contradicted["no_image"]
    assert contradicted["other_from"] in ("memory", "cache", "blank")


def test_explain_refuses_what_it_cannot_map_in_one_sentence(engine: Engine, tmp_path: Path) -> None:
    latents_only = tmp_path / "latents.pt"
    torch.save(torch.randn(513, 64), latents_only)
    with pytest.raises(BridgeError, match="holds no tile features"):
        engine.explain(FeaturesSource(latents_only), DAB, "Yes.")
    with pytest.raises(BridgeError, match="no answer to explain"):
        engine.explain(FeaturesSource(latents_only), DAB, " ")


# ------------------------------------------------------------------------------ through a real daemon


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """conftest's `serve --demo` daemon, with one thread and clients declared gone only after 30 s: on a
    loaded test machine its default 1 s cancels jobs whose client merely waited for the CPU."""
    yield from serve_demo(tmp_path_factory, {}, "--client-timeout", "30", "--threads", "1")


def test_explain_through_the_daemon_reports_progress_and_a_map_of_every_tile(
    daemon: Path, demo_40x: tuple[Path, DemoLayout]
) -> None:
    request = {"slide": str(demo_40x[0]), "conversation": DAB, "answer": "Yes.", "groups": 4, "random_orders": 1}
    with Client(daemon, timeout_s=30) as client:
        asked = client.run_job("ask", {"slide": str(demo_40x[0]), "conversation": DAB})
        events = list(client.events("explain", request))
    assert set(asked["reliance"]) >= {"with_slide", "no_image", "other_slide", "score", "flagged"}
    stages = {e.content["stage"] for e in events if e.type == "progress"}
    assert {"grouping", "occlusion", "refining", "faithfulness"} <= stages
    done = events[-1].content
    assert events[-1].type == "done" and done["method"] == "occlusion" and done["groups"] == 4
    assert len(done["values"]) == len(done["coords"]) == len(done["group_of"]) == done["tiles"] == asked["tiles"]
    assert done["refined"] and done["faithfulness"]["random_orders"] == 1 and done["tile_size"] > 0


def test_explain_through_the_daemon_cancels_between_batches_and_refuses_bad_requests(
    daemon: Path, demo_40x: tuple[Path, DemoLayout]
) -> None:
    request = {"slide": str(demo_40x[0]), "conversation": DAB, "answer": "Yes.", "groups": 64}
    with Client(daemon, timeout_s=30) as client, Client(daemon, timeout_s=30) as controller:
        events = client.events("explain", request)
        job_id = next(events).content["job_id"]
        next(e for e in events if e.type == "progress" and e.content["stage"] == "occlusion")
        controller.request("cancel", {"job_id": job_id})
        assert list(events)[-1].type == "cancelled"
        refused = list(client.events("explain", {**request, "groups": 1}))
        assert [m.type for m in refused] == ["error"] and refused[0].content["code"] == "bad-request"
        assert "'groups' must be a whole number from 2 to 1024" in refused[0].content["message"]
        preview = client.run_job("explain", {**request, "method": "attention", "groups": 4, "random_orders": 0})
        assert preview["method"] == "attention" and preview["refined"] == []
        assert sum(preview["values"]) == pytest.approx(1.0, abs=1e-4), "shares of the image tokens' attention"
