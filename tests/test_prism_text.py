"""Prism's text heads (encoders/prism_text.py): fidelity to Prism's public code on tiny random weights in the
published key layout, and the demo's text heads.

The reference is built from public facts: transformers' own BioGptForCausalLM runs the self-attention stack
(the same weights, loaded under the published keys minus the `text_decoder.model.` prefix), and a plain
cross-attention written here (per-head softmax(q k^T / sqrt(d)) v, with biases) is added where Prism's remote
code puts it: after self-attention in layers >= num_hidden_layers // 2, pre-normed by `x_attn_layer_norm`.
Zero-shot follows Prism's `zero_shot`: prompts + `</s>` tokenized as a right-padded batch, the last column
dropped, CLS appended, positions counted over non-padding tokens, the CLS state entering the first
cross-attention layer projected and normalised, a softmax over all prompts summed per label.
Tolerances (float32 on the CPU): logits and probabilities within 1e-5 absolute; generated ids identical.
The jobs run through a real `serve --demo` daemon on the shipped demo weights (their tiny text heads).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from antoni_bridge.client import Client
from antoni_bridge.encoders.demo import demo_text_heads, demo_vocabulary, write_demo_slide_encoder
from antoni_bridge.encoders.prism_text import (
    TIED_HEAD,
    PrismText,
    TextConfig,
    load_prism_text,
    load_text_state,
    load_tokenizer,
)
from antoni_bridge.errors import BridgeError
from tests.conftest import run_cli, serve_demo

transformers = pytest.importorskip("transformers")
TOLERANCE = 1e-5
PREFIX = "text_decoder.model."


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory):
    return write_demo_slide_encoder(tmp_path_factory.mktemp("prism"))


@pytest.fixture(scope="module")
def ours(folder) -> PrismText:
    """Random heads; the LM head untied, its `</s>` row along the final LayerNorm's bias so that generation
    sometimes stops."""
    model = load_prism_text(str(folder))
    torch.manual_seed(3)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.normal_(0.0, 0.3 if parameter.ndim == 2 else 0.1).add_(1.0 if "norm.weight" in name else 0.0)
        model.temperature.fill_(2.0)
        head = model.text_decoder.model.output_projection.weight
        bias = model.body.layer_norm.bias
        head[ours_eos(model)] = bias / bias.norm() * 1.5 * head.norm(dim=1).mean()
    return model


def ours_eos(model: PrismText) -> int:
    return model.config.eos_token_id


@pytest.fixture(scope="module")
def reference(ours: PrismText):
    """transformers' BioGPT with our weights, and Prism's cross-attention added by hooks at its place."""
    c = ours.config
    config = transformers.BioGptConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads,
        intermediate_size=c.intermediate_size,
        max_position_embeddings=c.max_position_embeddings,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=c.pad_token_id,
        eos_token_id=c.eos_token_id,
        bos_token_id=0,
        tie_word_embeddings=False,
        layer_norm_eps=1e-5,
    )
    model = transformers.BioGptForCausalLM(config).eval()
    state = ours.state_dict()
    theirs = model.state_dict()
    assert all(PREFIX + key in state for key in theirs), "the published BioGPT keys are ours under text_decoder.model."
    model.load_state_dict({key: state[PREFIX + key] for key in theirs})
    return CrossAttended(model, state, c)


class CrossAttended:
    """Hooks that add `x + x_attn(x_attn_layer_norm(x))` to each upper layer's self-attention residual."""

    def __init__(self, model, state: dict[str, torch.Tensor], config: TextConfig) -> None:
        self.model, self.state, self.config, self.latents = model, state, config, None
        for index, layer in enumerate(model.biogpt.layers):
            if index >= config.num_hidden_layers // 2:
                layer.register_forward_pre_hook(self._remember, with_kwargs=True)
                layer.self_attn.register_forward_hook(self._adder(index))

    def _remember(self, module, args, kwargs):
        self.layer_input = args[0] if args else kwargs["hidden_states"]

    def _adder(self, index: int):
        def hook(module, args, output):
            attended = output[0]
            x = self.layer_input + attended
            return (attended + self.cross_attention(index, x), *output[1:])

        return hook

    def cross_attention(self, index: int, x: torch.Tensor) -> torch.Tensor:
        w = {k.split(f"layers.{index}.x_attn")[1]: v for k, v in self.state.items() if f"layers.{index}.x_attn" in k}
        normed = F.layer_norm(x, x.shape[-1:], w["_layer_norm.weight"], w["_layer_norm.bias"], 1e-5)
        latents = self.latents.expand(x.shape[0], -1, -1)
        heads = self.config.num_attention_heads
        out = []
        q, k, v = (
            (t @ w[f".{name}_proj.weight"].T + w[f".{name}_proj.bias"]).unflatten(-1, (heads, -1))
            for t, name in ((normed, "q"), (latents, "k"), (latents, "v"))
        )
        for h in range(heads):
            scores = q[:, :, h] @ k[:, :, h].transpose(1, 2) / q.shape[-1] ** 0.5
            out.append(torch.softmax(scores, dim=-1) @ v[:, :, h])
        return torch.cat(out, dim=-1) @ w[".out_proj.weight"].T + w[".out_proj.bias"]


def test_keys_follow_the_published_layout(ours: PrismText) -> None:
    keys = set(ours.state_dict())
    half = ours.config.num_hidden_layers // 2
    crossed = {int(k.split(".")[4]) for k in keys if ".x_attn." in k}
    assert crossed == set(range(half, ours.config.num_hidden_layers))
    assert {"img_to_latents.to_latents.weight", "text_to_latents.to_latents.weight", "temperature"} <= keys
    assert f"{PREFIX}biogpt.layers.{half}.x_attn.k_proj.weight" in keys
    assert ours.state_dict()[f"{PREFIX}biogpt.layers.{half}.x_attn.k_proj.weight"].shape[1] == ours.config.context_dim


def test_decoder_logits_match_the_reference(ours: PrismText, reference: CrossAttended) -> None:
    torch.manual_seed(0)
    latents = torch.randn(2, 7, ours.config.context_dim)
    ids = torch.randint(4, ours.config.vocab_size - 1, (2, 9))
    reference.latents = latents
    with torch.no_grad():
        expected = reference.model(input_ids=ids).logits
        hidden, _ = ours.body.run(ids, torch.ones_like(ids), context_kv=ours.context_kv(latents))
        got = ours.text_decoder.model.output_projection(hidden)
    error = (got - expected).abs().max().item()
    assert error < TOLERANCE, f"max |logit difference| {error:.2e}"
    assert expected.abs().max() > 1  # the comparison is not between near-zero numbers


def test_zero_shot_matches_prism(ours: PrismText, reference: CrossAttended, folder) -> None:
    tokenizer = load_tokenizer(folder)
    ours.tokenizer = tokenizer
    prompts = {"carcinoma": ["invasive ductal carcinoma", "carcinoma"], "benign": ["benign tissue."]}
    flat = [p for phrasings in prompts.values() for p in phrasings]
    # Prism's zero_shot: tokenize(prompts)[:, :-1], CLS appended, mask from padding, positions from the mask.
    batch = tokenizer([p + tokenizer.eos_token for p in flat], padding=True, return_tensors="pt")["input_ids"]
    ids = torch.cat([batch[:, :-1], torch.full((len(flat), 1), ours.config.cls_token_id)], dim=1)
    mask = (ids != ours.config.pad_token_id).long()
    positions = mask.cumsum(1) * mask - 1
    reference.latents = torch.zeros(1, 1, ours.config.context_dim)  # Prism's are `torch.empty`: never read here
    with torch.no_grad():
        out = reference.model(input_ids=ids, attention_mask=mask, position_ids=positions, output_hidden_states=True)
        cls = out.hidden_states[ours.config.num_hidden_layers // 2][:, -1]
        state = ours.state_dict()
        text = F.normalize(cls @ state["text_to_latents.to_latents.weight"].T, dim=-1)
        image_embedding = torch.randn(3, ours.config.image_dim)
        image = F.normalize(image_embedding @ state["img_to_latents.to_latents.weight"].T, dim=-1)
        probabilities = torch.softmax(image @ text.T * state["temperature"].exp(), dim=-1)
        expected = torch.stack([probabilities[:, :2].sum(-1), probabilities[:, 2:].sum(-1)], dim=-1)
    token_lists = [[tokenizer.encode(p, add_special_tokens=False) for p in ph] for ph in prompts.values()]
    got = ours.label_probabilities(image_embedding, token_lists)
    error = (got - expected).abs().max().item()
    assert error < TOLERANCE, f"max |probability difference| {error:.2e}"
    assert torch.allclose(got.sum(-1), torch.ones(3))


@pytest.mark.parametrize("beams", [1, 3])
def test_generation_matches_the_reference(ours: PrismText, reference: CrossAttended, beams: int) -> None:
    torch.manual_seed(1)
    prompt = [20, 31, 40]
    stops = set()
    for _ in range(6):
        latents = torch.randn(7, ours.config.context_dim)
        reference.latents = latents[None]
        expected = reference.model.generate(
            torch.tensor([[ours.config.eos_token_id, *prompt]]),
            max_new_tokens=12,
            do_sample=False,
            num_beams=beams,
            length_penalty=1.0,
            early_stopping=False,
            eos_token_id=ours.config.eos_token_id,
            pad_token_id=ours.config.pad_token_id,
        )[0, 1 + len(prompt) :].tolist()
        got = ours.generate(latents, prompt, 12, beams=beams)
        stopped = ours.config.eos_token_id in expected
        expected = expected[: expected.index(ours.config.eos_token_id)] if stopped else expected
        assert got.token_ids == expected
        assert got.stop_reason == ("stop" if stopped else "length")
        stops.add(got.stop_reason)
    assert stops == {"stop", "length"}, "both ends of generation are compared"


def test_loading_is_strict_and_names_the_keys(folder) -> None:
    model = load_prism_text(str(folder))
    state = model.state_dict()
    with pytest.raises(BridgeError, match=r"missing: text_to_latents\.to_latents\.weight"):
        load_text_state(PrismText(model.config), {k: v for k, v in state.items() if not k.startswith("text_to")})
    with pytest.raises(BridgeError, match=r"unexpected: text_decoder\.model\.extra"):
        load_text_state(PrismText(model.config), {**state, "text_decoder.model.extra": torch.zeros(1)})
    with pytest.raises(BridgeError, match="hold no text heads"):
        load_text_state(PrismText(model.config), {"image_resampler.x": torch.zeros(1)})


def test_demo_heads_are_tied_and_the_tokenizer_is_biogpt(folder) -> None:
    model = load_prism_text(str(folder))
    assert torch.equal(model.state_dict()[TIED_HEAD], model.body.embed_tokens.weight)
    ids = model.tokenizer("Diagnosis: invasive ductal carcinoma.")["input_ids"]
    assert ids[0] == model.config.eos_token_id and model.tokenizer.unk_token_id not in ids
    assert len(ids) == 7  # whole words from the demo merges
    assert demo_vocabulary()[0]["madeupword0000</w>"] == model.config.cls_token_id
    assert demo_text_heads().config == model.config


# ---------------------------------------------------------------------- through a real daemon and the CLI


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """`serve --demo` (the shipped demo weights, with their text heads); clients count as gone after 10 s of
    silence, not 1 s: on a loaded build machine a waiting test process can miss its heartbeats for longer."""
    yield from serve_demo(tmp_path_factory, {}, "--client-timeout", "10")


@pytest.fixture(scope="module")
def latents_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("latents") / "latents.pt"
    torch.save(torch.randn(513, 64, generator=torch.Generator().manual_seed(7)), path)
    return path


def _client(daemon: Path) -> Client:
    return Client(daemon, timeout_s=60)


def test_zero_shot_probabilities_sum_to_one_and_change_with_the_prompts(daemon: Path, latents_file: Path) -> None:
    source = {"features": str(latents_file)}
    with _client(daemon) as client:
        plain = client.run_job("zero_shot", {**source, "labels": ["brown stain", "blue stain", "tumour"]})
        pooled = client.run_job(
            "zero_shot",
            {
                **source,
                "prompts": {
                    "brown stain": ["brown stain", "DAB positive"],
                    "blue stain": ["blue"],
                    "tumour": ["tumour"],
                },
            },
        )
    for done in (plain, pooled):
        assert done["labels"] == ["brown stain", "blue stain", "tumour"] and done["model"] == "prism"
        assert abs(sum(done["probabilities"]) - 1) < 1e-5 and done["map"] is None
        assert done["provenance"]["adapter"] is False and done["provenance"]["demo"] is True
    assert max(abs(a - b) for a, b in zip(plain["probabilities"], pooled["probabilities"], strict=True)) > 1e-3


def test_a_zero_shot_map_scores_each_tile_group(daemon: Path, demo_40x, tmp_path: Path) -> None:
    """Through the CLI and the daemon: the map in `done` and as QuPath tile objects."""
    out = tmp_path / "map.geojson"
    env = {"ANTONI_BRIDGE_CONNECTION_FILE": str(daemon)}
    args = ("--region", "0,0,8000,2400", "--labels", "tissue,glass", "--map", str(out), "--groups", "2", "--json")
    printed = run_cli("zero-shot", str(demo_40x[0]), *args, env=env)
    assert printed.returncode == 0, printed.stderr
    grid = json.loads(printed.stdout)["map"]
    assert grid["groups"] == 2 and len(grid["coords"]) == len(grid["group_of"]) == grid["tiles"] > 2
    assert set(grid["group_of"]) == {0, 1} and grid["tile_size"] > 0
    assert all(abs(sum(row) - 1) < 1e-5 for row in grid["probabilities"]) and len(grid["probabilities"]) == 2
    assert grid["probabilities"][0] != grid["probabilities"][1], "each group is scored from its own tiles"
    tiles = json.loads(out.read_text(encoding="utf-8"))["features"]
    assert len(tiles) == grid["tiles"] and tiles[0]["properties"]["classification"]["name"] in ("tissue", "glass")
    measured = tiles[0]["properties"]["measurements"]
    group = grid["probabilities"][tiles[0]["properties"]["measurements"]["Prism zero-shot group"]]
    assert [measured["Prism zero-shot: tissue"], measured["Prism zero-shot: glass"]] == group


def test_the_report_streams_and_is_labelled_as_prisms(daemon: Path, latents_file: Path) -> None:
    tokens: list[str] = []
    with _client(daemon) as client:
        done = client.run_job("report", {"features": str(latents_file), "max_new_tokens": 8}, on_token=tokens.append)
        beams = client.run_job("report", {"features": str(latents_file), "max_new_tokens": 8, "beams": 3})
    assert len(tokens) > 2 and "".join(tokens) == done["report"] and done["report"].startswith("Diagnosis:")
    assert (
        done["stop_reason"] == "length" and done["label"] == "Draft by Prism (not ANTONI)" and done["model"] == "prism"
    )
    assert beams["report"].startswith("Diagnosis:") and beams["stop_reason"] in ("stop", "length")


def test_a_report_can_be_cancelled_between_tokens(daemon: Path, latents_file: Path) -> None:
    with _client(daemon) as client, _client(daemon) as controller:
        events = client.events("report", {"features": str(latents_file), "max_new_tokens": 1000})
        job_id = next(events).content["job_id"]
        next(e for e in events if e.type == "token")
        controller.request("cancel", {"job_id": job_id})
        rest = list(events)
        assert rest[-1].type == "cancelled"
        # the demo decoder takes 160 positions: uncancelled, about 150 more tokens would have streamed
        assert sum(e.type == "token" for e in rest) < 50, "the cancel is seen between tokens"
        assert client.request("status").content["queue"]["running"] is None


@pytest.mark.parametrize(
    ("content", "sentence"),
    [
        ({}, "A zero_shot request carries either 'labels' or 'prompts'."),
        ({"labels": ["tumour"]}, "'labels' must be a list of 2 to 64 non-empty labels."),
        ({"labels": ["a", "b"], "prompts": {"a": ["x"], "b": ["y"]}}, "either 'labels' or 'prompts'"),
        ({"labels": ["a", " a"]}, "The zero_shot labels must be different and non-empty."),
        ({"prompts": {"a": [], "b": ["y"]}}, "'prompts' must map 2 to 64 labels"),
    ],
)
def test_bad_zero_shot_requests_get_one_sentence(daemon: Path, content: dict, sentence: str) -> None:
    with _client(daemon) as client, pytest.raises(BridgeError, match=re.escape(sentence)):
        client.run_job("zero_shot", {"features": "/nowhere/latents.pt", **content})


def test_bad_report_requests_get_one_sentence(daemon: Path) -> None:
    with _client(daemon) as client, pytest.raises(BridgeError, match="'beams' must be a whole number from 1 to 16"):
        client.run_job("report", {"features": "/nowhere/latents.pt", "beams": 0})


def test_the_cli_prints_prisms_labels_and_report(daemon: Path, latents_file: Path, tmp_path: Path) -> None:
    env = {"ANTONI_BRIDGE_CONNECTION_FILE": str(daemon)}
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"tumour": ["carcinoma", "tumor"], "normal": ["benign tissue"]}), encoding="utf-8")
    labels = run_cli("zero-shot", "--features", str(latents_file), "--prompts", str(prompts), "--json", env=env)
    assert labels.returncode == 0, labels.stderr
    done = json.loads(labels.stdout)
    assert done["labels"] == ["tumour", "normal"] and done["model"] == "prism"
    report = run_cli("report", "--features", str(latents_file), "--max-new-tokens", "5", env=env)
    assert report.returncode == 0, report.stderr
    assert report.stdout.startswith("Draft by Prism (not ANTONI):\nDiagnosis:") and "stop: length" in report.stdout
    one = run_cli("zero-shot", "--features", str(latents_file), "--labels", "tumour", env=env)
    assert one.returncode != 0 and "2 to 64" in one.stderr and "Traceback" not in one.stderr


def test_weights_without_text_heads_get_a_clear_error(tmp_path: Path, latents_file: Path, folder: Path) -> None:
    """A Prism folder holding the perceiver alone (keys or config): one sentence from the engine, as the
    daemon would reply it (`bad-input`)."""
    from safetensors.torch import load_file, save_file

    from antoni_bridge.engine import Engine, FeaturesSource, ModelChoice

    bare = tmp_path / "prism-without-text"
    bare.mkdir()
    state = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in state.items() if k.startswith("image_resampler.")}, str(bare / "model.safetensors"))
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    (bare / "config.json").write_text(json.dumps(config), encoding="utf-8")
    engine = Engine(ModelChoice(str(folder), str(bare), tmp_path), cache_dir=tmp_path / "cache")
    with pytest.raises(BridgeError, match="hold no text heads") as raised:
        engine.report(FeaturesSource(latents_file))
    assert "paige-ai/Prism" in raised.value.hint
    config.pop("biogpt_config")
    (bare / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(BridgeError, match="has no text heads"):
        engine.zero_shot(FeaturesSource(latents_file), ["a", "b"])
