"""ANTONI-Alpha on demo weights: the published formulas recomputed here, loading rules, generation."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from antoni_bridge.demo_assets import DemoWeights, write_demo_weights
from antoni_bridge.errors import BridgeError
from antoni_bridge.model.antoni import AntoniModel
from antoni_bridge.model.generation import GenerationOptions

QUESTION = [{"role": "user", "content": "What organ is this tissue from?"}]
GREEDY = GenerationOptions(max_new_tokens=12, greedy=True)


@pytest.fixture(scope="session")
def weights(tmp_path_factory: pytest.TempPathFactory) -> DemoWeights:
    return write_demo_weights(tmp_path_factory.mktemp("demo-weights"))


@pytest.fixture(scope="module")
def model(weights: DemoWeights) -> AntoniModel:
    return AntoniModel.load(weights.antoni)


@pytest.fixture
def latents() -> torch.Tensor:
    return torch.randn(513, 64, generator=torch.Generator().manual_seed(0))


# ------------------------------------------------------------------ the published formulas


def test_projector_equals_the_published_formula(model: AntoniModel, latents: torch.Tensor) -> None:
    p = {
        k.removeprefix("projection_layer."): v
        for k, v in model.state_dict().items()
        if k.startswith("projection_layer.")
    }
    heads = model.config.projector_num_query_heads
    q = p["query_tokens"][0] @ p["q_proj.weight"].T  # (256, 64)
    k = latents @ p["k_proj.weight"].T
    v = latents @ p["v_proj.weight"].T  # (513, 64): the LLM width
    outputs = []
    for h in range(heads):
        qs, ks = q.chunk(heads, dim=-1)[h], k.chunk(heads, dim=-1)[h]
        weights_ = torch.softmax(qs @ ks.T / math.sqrt(qs.shape[-1]), dim=-1)
        outputs.append(weights_ @ v.chunk(heads, dim=-1)[h])
    pooled = torch.cat(outputs, dim=-1) @ p["out_proj.weight"].T
    expected = F.layer_norm(pooled, (pooled.shape[-1],), p["layer_norm.weight"], p["layer_norm.bias"])
    with torch.no_grad():
        ours = model.projection_layer(latents[None])[0]
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_projector_mask_means_attend(model: AntoniModel, latents: torch.Tensor) -> None:
    padded = torch.cat([latents, torch.randn(7, 64)])[None]
    mask = torch.ones(1, 520, dtype=torch.bool)
    mask[0, 513:] = False
    with torch.no_grad():
        torch.testing.assert_close(
            model.projection_layer(padded, mask), model.projection_layer(latents[None]), atol=1e-5, rtol=1e-5
        )


def test_prompt_is_rendered_as_published_with_two_bos(model: AntoniModel) -> None:
    ids = model.prompt_ids([{"role": "user", "content": "Q"}])
    text = model.tokenizer.decode(ids)
    image = "<image_soft_token>" * 256
    assert text == (
        f"<bos><bos><start_of_turn>user\n\n\n<start_of_image>{image}<end_of_image>\n\nQ<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


def test_logits_equal_a_merged_weight_forward_with_embeddings_inserted_by_hand(
    model: AntoniModel, weights: DemoWeights, latents: torch.Tensor
) -> None:
    """Independent path: fold LoRA into a plain Gemma 3 (no peft), insert the projector output by hand."""
    from transformers import Gemma3ForConditionalGeneration

    plain = Gemma3ForConditionalGeneration.from_pretrained(weights.llm, dtype=torch.float32).eval()
    trained = load_file(weights.antoni / "model.safetensors")
    scale = model.config.lora_alpha / model.config.lora_r
    base = plain.state_dict()
    prefix = "llm.base_model.model."
    for key in trained:
        if ".lora_A.default." in key:
            target = key.removeprefix(prefix).replace(".lora_A.default.weight", ".weight")
            b = trained[key.replace("lora_A", "lora_B")]
            base[target] = base[target] + scale * b @ trained[key]
    embed = trained[prefix + "model.language_model.embed_tokens.modules_to_save.default.weight"]
    base["lm_head.weight"] = trained[prefix + "lm_head.modules_to_save.default.weight"]
    plain.load_state_dict(base, assign=True)

    ids = model.prompt_ids(QUESTION)[None]
    with torch.no_grad():
        image = model.projection_layer(latents[None])  # checked against the formula above
        inputs = embed[ids] * math.sqrt(embed.shape[1])
        inputs[ids == model.ids.image] = image[0]
        expected = plain.lm_head(plain.model.language_model(inputs_embeds=inputs).last_hidden_state)
        ours = model(latents, ids)
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------ loading


def test_checkpoint_has_the_published_key_names(weights: DemoWeights) -> None:
    keys = set(load_file(weights.antoni / "model.safetensors"))
    assert "projection_layer.query_tokens" in keys
    assert {f"projection_layer.{n}_proj.weight" for n in ("q", "k", "v", "out")} <= keys
    assert "llm.base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.default.weight" in keys
    assert "llm.base_model.model.model.language_model.embed_tokens.modules_to_save.default.weight" in keys
    assert "llm.base_model.model.lm_head.modules_to_save.default.weight" in keys
    assert any(".vision_tower." in k and ".lora_B.default." in k for k in keys), "all-linear includes the tower"


def test_full_bin_and_sharded_checkpoints_load_the_same(
    model: AntoniModel, weights: DemoWeights, tmp_path: Path, latents: torch.Tensor
) -> None:
    trained = load_file(weights.antoni / "model.safetensors")
    full = {k: v.clone() for k, v in model.state_dict().items()}  # base weights included, as a full save has them
    full |= trained
    variants = {"bin": tmp_path / "bin", "sharded": tmp_path / "sharded"}
    for folder in variants.values():
        folder.mkdir()
        shutil.copy(weights.antoni / "config.json", folder)
        (folder / "config.json").write_text(
            (weights.antoni / "config.json").read_text().replace('"../llm"', json.dumps(str(weights.llm)))
        )
    torch.save(full, variants["bin"] / "pytorch_model.bin")
    names = sorted(trained)
    half = len(names) // 2
    save_file({k: trained[k] for k in names[:half]}, str(variants["sharded"] / "model-00001-of-00002.safetensors"))
    save_file({k: trained[k] for k in names[half:]}, str(variants["sharded"] / "model-00002-of-00002.safetensors"))
    weight_map = {k: f"model-0000{1 if i < half else 2}-of-00002.safetensors" for i, k in enumerate(names)}
    (variants["sharded"] / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    ids = model.prompt_ids(QUESTION)[None]
    with torch.no_grad():
        expected = model(latents, ids)
        for folder in variants.values():
            torch.testing.assert_close(AntoniModel.load(folder)(latents, ids), expected)


def test_transformers_4_key_names_and_full_4bit_checkpoints_load(
    model: AntoniModel, weights: DemoWeights, latents: torch.Tensor
) -> None:
    """The release was saved with transformers 4.56 (SigLIP one level deeper, as up to early 5.x) and with the
    4-bit base; checkpoints with either naming load into whichever transformers is installed."""
    pytest.importorskip("bitsandbytes", reason="the gpu extra is not installed")
    trained = load_file(weights.antoni / "model.safetensors")
    flat = {k.replace(".vision_tower.vision_model.", ".vision_tower."): v for k, v in trained.items()}
    nested = {k.replace(".vision_tower.", ".vision_tower.vision_model."): v for k, v in flat.items()}
    assert nested.keys() != flat.keys()
    ids = model.prompt_ids(QUESTION)[None]
    with torch.no_grad():
        expected = model(latents, ids)
        for naming in (nested, flat):
            model.load_trained(naming)
            torch.testing.assert_close(model(latents, ids), expected)
    full_four_bit = AntoniModel.load(weights.antoni, quant="4bit").state_dict()
    assert any(k.endswith(".weight.absmax") for k in full_four_bit)
    model.load_trained({k: v.float() if v.dtype == torch.bfloat16 else v for k, v in full_four_bit.items()})
    with pytest.raises(BridgeError, match=r"unexpected: projection_layer\.nested_gate"):
        model.load_trained(trained | {"projection_layer.nested_gate.weight": torch.zeros(1)})
    model.load_trained(trained)


def test_missing_or_unexpected_keys_are_named(model: AntoniModel, weights: DemoWeights) -> None:
    trained = load_file(weights.antoni / "model.safetensors")
    lora_key = "llm.base_model.model.model.language_model.layers.1.mlp.down_proj.lora_B.default.weight"
    without = {k: v for k, v in trained.items() if k != lora_key}
    with pytest.raises(BridgeError, match=r"missing: llm\.base_model\.model\.model\.language_model\.layers\.1\.mlp"):
        model.load_trained(without)
    with pytest.raises(BridgeError, match=r"unexpected: projection_layer\.extra"):
        model.load_trained(trained | {"projection_layer.extra": torch.zeros(1)})
    model.load_trained(trained)  # and the model is whole again


def test_revision_selects_the_hub_snapshot(
    weights: DemoWeights, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Hugging Face cache with `main` and `pretrain` revisions, laid out as the hub library lays it out."""
    from antoni_bridge.encoders.sources import resolve_model_dir

    repo = tmp_path / "hub" / "models--SaltySander--ANTONI-Alpha"
    for ref, commit in (("main", "a" * 40), ("pretrain", "b" * 40)):
        shutil.copytree(weights.antoni, repo / "snapshots" / commit)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert resolve_model_dir("SaltySander/ANTONI-Alpha", "weights").name == "a" * 40
    assert resolve_model_dir("SaltySander/ANTONI-Alpha", "weights", revision="pretrain").name == "b" * 40


def test_weights_of_another_architecture_are_refused(weights: DemoWeights, tmp_path: Path) -> None:
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(BridgeError, match="not Gemma 3"):
        AntoniModel.load(weights.antoni, llm_source=llama)
    with pytest.raises(BridgeError, match="not ANTONI-Alpha"):
        AntoniModel.load(llama)


def test_four_bit_base_loads_strictly_and_answers(
    weights: DemoWeights, model: AntoniModel, latents: torch.Tensor
) -> None:
    """NF4 with double quantisation, as on a GPU, through bitsandbytes' CPU backend."""
    pytest.importorskip("bitsandbytes", reason="the gpu extra is not installed")
    from bitsandbytes.nn import Linear4bit

    quantised = AntoniModel.load(weights.antoni, quant="4bit")
    assert quantised.loaded.quant == "4bit"
    base = quantised.llm.base_model.model.model.language_model.layers[0].self_attn.q_proj.base_layer
    assert isinstance(base, Linear4bit) and base.weight.quant_state.nested, "NF4 with double quantisation"
    assert quantised.projection_layer.query_tokens.dtype == torch.bfloat16, "bf16 around the 4-bit base, as published"
    ids = model.prompt_ids(QUESTION)[None]
    with torch.no_grad():
        exact, approximate = model(latents, ids)[0, -50:].float(), quantised(latents, ids)[0, -50:].float()
    correlation = torch.corrcoef(torch.stack([exact.flatten(), approximate.flatten()]))[0, 1]
    assert correlation > 0.9, "4-bit logits follow the fp32 model's (they would not with missing trained parts)"
    assert len(quantised.answer(latents, QUESTION, GREEDY).token_ids) == 12


# ------------------------------------------------------------------ generation


def test_streamed_greedy_output_equals_the_returned_answer_and_is_deterministic(
    model: AntoniModel, latents: torch.Tensor
) -> None:
    pieces: list[str] = []
    streamed = model.answer(latents, QUESTION, GREEDY, on_text=pieces.append)
    quiet = model.answer(latents, QUESTION, GREEDY)
    assert "".join(pieces) == streamed.text
    assert streamed.token_ids == quiet.token_ids and len(quiet.token_ids) == 12
    assert streamed.stop_reason == "length"


def test_cancellation_stops_within_one_token(model: AntoniModel, latents: torch.Tensor) -> None:
    checks: list[int] = []

    def cancelled() -> bool:  # the user presses cancel while the third token is being made
        checks.append(1)
        return len(checks) > 3

    result = model.answer(latents, QUESTION, GenerationOptions(max_new_tokens=50), cancelled=cancelled)
    assert result.stop_reason == "cancelled"
    assert len(result.token_ids) == 3


def test_prefix_reuse_gives_identical_tokens(model: AntoniModel, latents: torch.Tensor) -> None:
    first = model.answer(latents, QUESTION, GREEDY, prefix_key="slide-1")
    follow_up = [*QUESTION, {"role": "assistant", "content": first.text}, {"role": "user", "content": "Any tumour?"}]
    reused = model.answer(latents, follow_up, GREEDY, prefix_key="slide-1")
    model.prefixes.clear()
    fresh = model.answer(latents, follow_up, GREEDY)
    assert reused.reused_tokens >= 256 and fresh.reused_tokens == 0
    assert reused.token_ids == fresh.token_ids


def test_prefix_cache_is_per_image(model: AntoniModel, latents: torch.Tensor) -> None:
    first = model.answer(latents, QUESTION, GREEDY, prefix_key="slide-1")
    follow_up = [*QUESTION, {"role": "assistant", "content": first.text}, {"role": "user", "content": "Any tumour?"}]
    other = model.answer(latents * 2, follow_up, GREEDY, prefix_key="slide-1")  # same key, other latents
    model.prefixes.clear()
    assert other.reused_tokens == 0
    assert other.token_ids == model.answer(latents * 2, follow_up, GREEDY).token_ids


def test_cached_decoding_equals_recomputing_every_step(model: AntoniModel, latents: torch.Tensor) -> None:
    ours = model.answer(latents, QUESTION, GREEDY).token_ids
    ids = model.prompt_ids(QUESTION)[None]
    naive: list[int] = []
    with torch.no_grad():
        for _ in range(len(ours)):
            full = torch.cat([ids, torch.tensor([naive], dtype=torch.long)], dim=1) if naive else ids
            naive.append(int(model(latents, full)[0, -1].argmax()))
    assert ours == naive


def test_answers_never_run_past_the_context(model: AntoniModel, latents: torch.Tensor) -> None:
    fitted = model._fit(GenerationOptions(max_new_tokens=10**6), prompt_tokens=300)
    assert fitted.max_new_tokens == model.context_length - 300


def test_multiple_choice_equals_an_independent_per_token_likelihood(model: AntoniModel, latents: torch.Tensor) -> None:
    from antoni_bridge.model import prompt

    choices = ["colon", "breast tissue with carcinoma", "lung", "model"]  # "model" also ends the template
    batched = model.score_choices(latents, "Which organ?", choices)
    start = len(model.prompt_ids([{"role": "user", "content": "Which organ?"}]))
    expected = []
    for choice in choices:
        row = prompt.encode(
            model.tokenizer,
            [{"role": "user", "content": "Which organ?"}, {"role": "assistant", "content": choice}],
            256,
            False,
        )
        answer = model.tokenizer(choice, add_special_tokens=False)["input_ids"]
        assert row[start : start + len(answer)].tolist() == answer
        with torch.no_grad():
            log_probs = torch.log_softmax(model(latents, row[None])[0].float(), dim=-1)
        expected.append(-float(np.mean([log_probs[start + i - 1, t] for i, t in enumerate(answer)])))
    np.testing.assert_allclose(batched.mean_nll, expected, rtol=1e-4, atol=1e-4)
    assert batched.best == choices[int(np.argmin(expected))]


def test_view_mode_is_medgemma_itself_with_the_adapter_off(model: AntoniModel, weights: DemoWeights) -> None:
    from transformers import Gemma3ForConditionalGeneration

    image = np.random.default_rng(0).integers(0, 256, (150, 200, 3), dtype=np.uint8)
    conversation = [{"role": "user", "content": "Describe this field."}]
    ours = model.view(image, conversation, GREEDY)
    plain = Gemma3ForConditionalGeneration.from_pretrained(weights.llm, dtype=torch.float32).eval()
    text = model.tokenizer.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this field."}]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    text = text.replace("<start_of_image>", "\n\n<start_of_image>" + "<image_soft_token>" * 16 + "<end_of_image>\n\n")
    ids = torch.tensor([model.tokenizer(text, add_special_tokens=False)["input_ids"]])
    pixels = model._pixel_values(image)
    tokens: list[int] = []
    with torch.no_grad():
        for _ in range(12):
            full = torch.cat([ids, torch.tensor([tokens], dtype=torch.long)], dim=1) if tokens else ids
            logits = plain(input_ids=full, pixel_values=pixels, token_type_ids=(full == model.ids.image).long()).logits
            tokens.append(int(logits[0, -1].argmax()))
    stop = next((i for i, t in enumerate(tokens) if t in model.ids.stops), len(tokens))
    assert ours.token_ids == tokens[:stop]


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (torch.randn(513, 32), "have shape"),
        (torch.randn(600, 64), "have shape"),
        (torch.full((513, 64), 1e30), "overflow"),
        (torch.randn(2, 513, 64), "have shape"),
        (torch.zeros(513, 64, dtype=torch.long), "floating-point"),
        (torch.full((513, 64), float("nan")), "NaN"),
    ],
)
def test_bad_latents(model: AntoniModel, bad: torch.Tensor, message: str) -> None:
    with pytest.raises(BridgeError, match=message):
        model.answer(bad, QUESTION, GREEDY)


@pytest.mark.parametrize(
    ("conversation", "message"),
    [
        ([], "empty"),
        ([{"role": "assistant", "content": "hi"}], "must alternate"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "must alternate"),
        ([{"role": "user", "content": "  "}], "no text"),
        ([{"role": "user", "content": "organ " * 3000}], "at most"),
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "ends with an answer"),
    ],
)
def test_bad_conversations(model: AntoniModel, latents: torch.Tensor, conversation: list, message: str) -> None:
    with pytest.raises(BridgeError, match=message):
        model.answer(latents, conversation, GREEDY)


def test_follow_up_after_the_sliding_window_reuses_the_image_block(tmp_path: Path, latents: torch.Tensor) -> None:
    """With a 32-token window, rolling the cache back past an answer must still give the right tokens: by
    transformers' own crop where it keeps past states, else from the first prefill's snapshot."""
    from antoni_bridge.model.demo import write_demo_antoni, write_demo_llm

    write_demo_llm(tmp_path / "llm", sliding_window=32)
    narrow = AntoniModel.load(write_demo_antoni(tmp_path / "antoni", tmp_path / "llm", 64))
    first = narrow.answer(latents, QUESTION, GREEDY, prefix_key="slide")
    edited = [
        *QUESTION,
        {"role": "assistant", "content": "Edited: " + first.text},
        {"role": "user", "content": "Why?"},
    ]
    reused = narrow.answer(latents, edited, GREEDY, prefix_key="slide")
    assert reused.reused_tokens >= first.prompt_tokens, "the image block and first question are reused"
    narrow.prefixes.clear()
    assert reused.token_ids == narrow.answer(latents, edited, GREEDY).token_ids


def test_prefix_falls_back_to_the_snapshot_when_the_cache_cannot_roll_back(
    model: AntoniModel, latents: torch.Tensor
) -> None:
    first = model.answer(latents, QUESTION, GREEDY, prefix_key="slide")
    entry = model.prefixes.entries["slide"]

    def refuse(_: int) -> None:
        raise RuntimeError("past the sliding window")  # what transformers raises when it cannot roll back

    entry.cache.crop = refuse
    edited = [
        *QUESTION,
        {"role": "assistant", "content": "Edited: " + first.text},
        {"role": "user", "content": "Why?"},
    ]
    reused = model.answer(latents, edited, GREEDY, prefix_key="slide")
    assert reused.reused_tokens == first.prompt_tokens
    model.prefixes.clear()
    assert reused.token_ids == model.answer(latents, edited, GREEDY).token_ids


def test_streamed_text_is_the_answer_even_when_a_character_is_cut(model: AntoniModel) -> None:
    """Byte-level tokens split multi-byte characters; the stream never shows half of one, and the
    answer is exactly what was streamed, wherever generation stops."""
    from antoni_bridge.model.generation import TextStream

    ids = model.tokenizer("a中文b 器官", add_special_tokens=False)["input_ids"]
    assert len(ids) > len("a中文b 器官".encode()) // 2, "the demo tokenizer splits these characters"
    for stop in range(1, len(ids) + 1):
        stream, pieces = TextStream(model.tokenizer), []
        for k in range(1, stop + 1):
            pieces.append(stream.delta(ids[:k]))
        pieces.append(stream.flush(ids[:stop]))
        assert "".join(pieces) == stream.text
        assert "\ufffd" not in stream.text
        assert stream.text == model.tokenizer.decode(ids[:stop]).rstrip("\ufffd")


def test_bytes_that_can_never_make_a_character_are_shown_not_held_for_ever(model: AntoniModel) -> None:
    """A model can emit a run of bytes no character starts with (0xFD here: random weights do); after at most
    four such tokens the stream shows them as U+FFFD, where it once held them all back and streamed nothing."""
    from antoni_bridge.model.generation import UTF8_MAX_BYTES, TextStream

    invalid = model.tokenizer.convert_tokens_to_ids("ý")  # the byte-level token of the byte 0xFD
    stream, ids = TextStream(model.tokenizer), []
    pieces = []
    for _ in range(12):
        ids.append(invalid)
        pieces.append(stream.delta(ids))
    assert all(piece == "" for piece in pieces[: UTF8_MAX_BYTES - 1]) and "\ufffd" in "".join(pieces)
    assert "".join(pieces) + stream.flush(ids) == stream.text
