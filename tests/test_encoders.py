"""Encoders: the Virchow recipe against timm itself, Prism against the published key names and an
independent functional forward written here, and the model-source messages."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from timm.layers import SwiGLUPacked

from antoni_bridge.encoders.demo import DEMO_VIT_ARGS
from antoni_bridge.encoders.prism import PerceiverConfig, SlideEncoder, load_slide_encoder
from antoni_bridge.encoders.sources import resolve_model_dir
from antoni_bridge.encoders.virchow import load_tile_encoder
from antoni_bridge.errors import BridgeError

# ---------------------------------------------------------------- Virchow


def test_virchow_embedding_equals_a_direct_timm_computation(demo_encoders: tuple[Path, Path]) -> None:
    tile_dir, _ = demo_encoders
    encoder = load_tile_encoder(tile_dir)
    pixels = np.random.default_rng(0).integers(0, 256, size=(3, 224, 224, 3), dtype=np.uint8)
    ours = encoder.embed(pixels)

    reference = timm.create_model(
        "vit_huge_patch14_224", pretrained=False, mlp_layer=SwiGLUPacked, act_layer=torch.nn.SiLU, **DEMO_VIT_ARGS
    )
    from safetensors.torch import load_file

    reference.load_state_dict(load_file(tile_dir / "model.safetensors"))
    reference.eval()
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    batch = torch.tensor(((pixels / 255.0 - mean) / std).transpose(0, 3, 1, 2), dtype=torch.float32)
    with torch.no_grad():
        tokens = reference(batch)
    expected = torch.cat([tokens[:, 0], tokens[:, 1:].mean(1)], dim=-1)
    assert ours.shape == (3, 96)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_virchow_resizes_larger_tiles_like_pil_bicubic(demo_encoders: tuple[Path, Path]) -> None:
    """448-px reads at 40x become 224-px tiles; our on-device resize stays close to PIL's bicubic."""
    encoder = load_tile_encoder(demo_encoders[0])
    big = np.asarray(Image.open(_sample_png()).convert("RGB").resize((448, 448)))[None]
    ours = encoder.preprocess(big)
    pil = np.asarray(Image.fromarray(big[0]).resize((224, 224), Image.Resampling.BICUBIC)) / 255.0
    pil = (pil - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    difference = np.abs(ours[0].numpy().transpose(1, 2, 0) - pil)
    assert difference.mean() < 0.02


def _sample_png() -> str:
    from skimage import data

    path = Path(__file__).parent / ".sample.png"
    if not path.exists():
        Image.fromarray(data.immunohistochemistry()).save(path)
    return str(path)


# ---------------------------------------------------------------- Prism

TINY = PerceiverConfig(
    latent_seq=16, latent_dim=32, context_dim=24, mhsa_heads=4, perceiver_depth=4, transformer_depth=2
)


def _published_style_state(config: PerceiverConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """A Prism checkpoint as the published model lists it: every layer's alias of the shared blocks,
    plus text-decoder and contrastive-head tensors that the slide encoder must ignore."""
    g = torch.Generator().manual_seed(seed)
    d, c, p = config.latent_dim, config.context_dim, "image_resampler."
    state: dict[str, torch.Tensor] = {}

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.2

    def ff(prefix: str) -> dict[str, torch.Tensor]:
        return {
            f"{prefix}.norm.weight": 1 + r(d),
            f"{prefix}.norm.bias": r(d),
            f"{prefix}.net.0.weight": r(2 * d, d),
            f"{prefix}.net.0.bias": r(2 * d),
            f"{prefix}.net.2.weight": r(d, d),
            f"{prefix}.net.2.bias": r(d),
        }

    state[p + "perceiver.latents"] = r(config.latent_seq + 1, d) * 5
    for name in ("cls_norm", "img_norm"):
        state[f"{p}{name}.weight"], state[f"{p}{name}.bias"] = 1 + r(d), r(d)
    blocks = {}
    for x in (0, 1):
        base = f"{p}perceiver.layers.{x}.xattn"
        blocks[x] = {
            f"{base}.xattn.x_norm.weight": 1 + r(d),
            f"{base}.xattn.x_norm.bias": r(d),
            f"{base}.xattn.to_q.weight": r(d, d),
            f"{base}.xattn.to_kv.weight": r(2 * d, c),
            f"{base}.xattn.to_out.weight": r(d, d),
            **ff(f"{base}.ff"),
        }
        state |= blocks[x]
    tf = {}
    for j in range(config.transformer_depth):
        base = f"{p}perceiver.layers.0.tf.{j}"
        tf |= {
            f"{base}.mhsa.norm.weight": 1 + r(d),
            f"{base}.mhsa.norm.bias": r(d),
            f"{base}.mhsa.mha.in_proj_weight": r(3 * d, d),
            f"{base}.mhsa.mha.out_proj.weight": r(d, d),
            **ff(f"{base}.ff"),
        }
    state |= tf
    for layer in range(2, config.perceiver_depth):  # aliases, as a full state_dict() export lists them
        state |= {k.replace("layers.1.", f"layers.{layer}."): v.clone() for k, v in blocks[1].items()}
    for layer in range(1, config.perceiver_depth):
        state |= {k.replace("layers.0.tf", f"layers.{layer}.tf"): v.clone() for k, v in tf.items()}
    state |= {"text_decoder.model.biogpt.embed_tokens.weight": r(10, 8), "temperature": torch.tensor(2.6)}
    state |= {"img_to_latents.to_latents.weight": r(40, d)}
    return state


def _reference_forward(state: dict[str, torch.Tensor], config: PerceiverConfig, context: torch.Tensor) -> torch.Tensor:
    """Prism's perceiver written out plainly from the weights, one operation per line."""
    w = {k.removeprefix("image_resampler."): v for k, v in state.items()}
    d = config.latent_dim

    def ln(x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, (d,), w[f"{name}.weight"], w[f"{name}.bias"], eps=1e-5)

    def feed_forward(x: torch.Tensor, name: str) -> torch.Tensor:
        h = ln(x, f"{name}.norm") @ w[f"{name}.net.0.weight"].T + w[f"{name}.net.0.bias"]
        value, gate = h[..., :d], h[..., d:]
        gelu = gate * 0.5 * (1 + torch.erf(gate / math.sqrt(2)))
        return (value * gelu) @ w[f"{name}.net.2.weight"].T + w[f"{name}.net.2.bias"]

    x = w["perceiver.latents"].clone()
    for layer in range(config.perceiver_depth):
        xa = f"perceiver.layers.{min(layer, 1)}.xattn"
        q = ln(x, f"{xa}.xattn.x_norm") @ w[f"{xa}.xattn.to_q.weight"].T
        kv = context @ w[f"{xa}.xattn.to_kv.weight"].T
        k, v = kv[:, :d], kv[:, d:]
        attention = torch.softmax(q @ k.T / math.sqrt(d), dim=-1)
        x = x + (attention @ v) @ w[f"{xa}.xattn.to_out.weight"].T
        x = x + feed_forward(x, f"{xa}.ff")
        for j in range(config.transformer_depth):
            base = f"perceiver.layers.0.tf.{j}"
            h = ln(x, f"{base}.mhsa.norm")
            qkv = h @ w[f"{base}.mhsa.mha.in_proj_weight"].T
            heads, hd = config.mhsa_heads, d // config.mhsa_heads
            out = torch.empty_like(h)
            for head in range(heads):
                cols = slice(head * hd, (head + 1) * hd)
                qh, kh, vh = qkv[:, :d][:, cols], qkv[:, d : 2 * d][:, cols], qkv[:, 2 * d :][:, cols]
                out[:, cols] = torch.softmax(qh @ kh.T / math.sqrt(hd), dim=-1) @ vh
            x = x + out @ w[f"{base}.mhsa.mha.out_proj.weight"].T
            x = x + feed_forward(x, f"{base}.ff")
    first = F.layer_norm(x[:1], (d,), w["cls_norm.weight"], w["cls_norm.bias"], eps=1e-5)
    rest = F.layer_norm(x[1:], (d,), w["img_norm.weight"], w["img_norm.bias"], eps=1e-5)
    return torch.cat([first, rest])


def test_prism_loads_published_key_names_and_matches_an_independent_forward(tmp_path: Path) -> None:
    state = _published_style_state(TINY)
    folder = tmp_path / "prism"
    folder.mkdir()
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_type": "prism", "perceiver_config": TINY.to_dict()}))
    encoder = load_slide_encoder(folder)
    context = torch.randn(37, TINY.context_dim, generator=torch.Generator().manual_seed(1))
    ours = encoder.encode(context)
    expected = _reference_forward(state, TINY, context)
    assert ours.shape == (TINY.latent_seq + 1, TINY.latent_dim)
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)


def test_prism_module_has_exactly_the_published_keys_at_full_size() -> None:
    """Against the 87 names and shapes of the published checkpoint (tests/data, from the public code)."""
    published = {}
    for line in (Path(__file__).parent / "data" / "prism_perceiver_keys.tsv").read_text().splitlines():
        if line and not line.startswith("#"):
            name, shape = line.split("\t")
            published[name] = tuple(int(n) for n in shape.strip("()").split(",") if n.strip())
    ours = {k: tuple(v.shape) for k, v in SlideEncoder(PerceiverConfig()).state_dict().items()}
    assert ours == published
    assert sum(math.prod(shape) for shape in ours.values()) == 99_037_440


def test_prism_mask_means_attend_and_equals_running_each_slide_alone() -> None:
    torch.manual_seed(0)
    encoder = SlideEncoder(TINY).eval()
    a, b = torch.randn(5, TINY.context_dim), torch.randn(9, TINY.context_dim)
    padded = torch.zeros(2, 9, TINY.context_dim)
    padded[0, :5], padded[1] = a, b
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[0, :5], mask[1] = True, True
    with torch.no_grad():
        batch_cls, batch_latents = encoder(padded, mask)
        alone_cls, alone_latents = encoder(a[None])
    torch.testing.assert_close(batch_cls[0], alone_cls[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batch_latents[0], alone_latents[0], atol=1e-5, rtol=1e-5)


def test_prism_refuses_weights_of_another_shape_or_with_unknown_keys(tmp_path: Path) -> None:
    state = _published_style_state(TINY)
    encoder = SlideEncoder(
        PerceiverConfig(
            latent_seq=16, latent_dim=32, context_dim=48, mhsa_heads=4, perceiver_depth=4, transformer_depth=2
        )
    )
    with pytest.raises(BridgeError, match=re.escape("wrong shape: image_resampler.perceiver.layers.0.xattn")):
        encoder.load_published_state_dict(state)
    state["image_resampler.perceiver.extra.weight"] = torch.zeros(1)
    with pytest.raises(BridgeError, match=re.escape("unexpected: image_resampler.perceiver.extra.weight")):
        SlideEncoder(TINY).load_published_state_dict(state)
    tampered = _published_style_state(TINY)
    tampered["image_resampler.perceiver.layers.3.xattn.xattn.to_q.weight"] += 1  # not a faithful alias
    with pytest.raises(BridgeError, match=re.escape("unexpected: image_resampler.perceiver.layers.3")):
        SlideEncoder(TINY).load_published_state_dict(tampered)


# ---------------------------------------------------------------- model sources


def test_model_found_in_the_hugging_face_cache(
    tmp_path: Path, demo_encoders: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = tmp_path / "hub"
    snapshot = hub / "models--paige-ai--Virchow" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    for file in demo_encoders[0].iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    (hub / "models--paige-ai--Virchow" / "refs").mkdir()
    (hub / "models--paige-ai--Virchow" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    assert resolve_model_dir("paige-ai/Virchow", "tile encoder") == snapshot
    assert load_tile_encoder("paige-ai/Virchow").embedding_dim == 96


def test_missing_model_gives_one_sentence_with_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    with pytest.raises(BridgeError) as offline:
        resolve_model_dir("paige-ai/Prism", "slide encoder")
    assert "not in the Hugging Face cache" in offline.value.message
    assert "hf download paige-ai/Prism" in offline.value.hint
    with pytest.raises(BridgeError, match="No tile encoder at"):
        resolve_model_dir(str(tmp_path / "nowhere" / "virchow"), "tile encoder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BridgeError, match=re.escape("has no config.json")):
        resolve_model_dir(tmp_path / "empty", "tile encoder")


def test_gated_model_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A double of the hub's answer for a gated repository (the hub cannot be reached here)."""
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError

    def hub_double(
        repo_id: str, revision: str | None = None, cache_dir: str | None = None, local_files_only: bool = False
    ) -> str:
        if local_files_only:
            raise LocalEntryNotFoundError("not cached")
        gated = GatedRepoError.__new__(GatedRepoError)  # the hub's error, without a live HTTP response
        Exception.__init__(gated, "403: access to model paige-ai/Virchow is restricted")
        raise gated

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub_double)
    with pytest.raises(BridgeError) as gated:
        resolve_model_dir("paige-ai/Virchow", "tile encoder")
    assert "gated" in gated.value.message
    assert "https://huggingface.co/paige-ai/Virchow" in gated.value.hint
