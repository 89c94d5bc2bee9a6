"""Demo encoders: tiny random-weight models with Virchow's and Prism's exact structure and key names.

The demo Prism folder also holds Prism's text heads (a 4-layer BioGPT with cross-attention, the contrastive
projections) and a small BioGPT tokenizer vocabulary in `biogpt/`, so zero-shot labels and report drafts
run in the demo; the text keys are drawn after the perceiver's, so the perceiver is the same with or without.

They are written in the published folder layout (config.json + model.safetensors) and loaded by the
same code that loads the real weights, so everything downstream runs offline. Their embeddings mean
nothing; every output made with them says so (`prism-demo`, `...demo` in the encoder names).
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch
from safetensors.torch import save_file

from antoni_bridge.encoders.prism import PerceiverConfig, SlideEncoder
from antoni_bridge.encoders.prism_text import TIED_HEAD, TOKENIZER_FOLDER, PrismText, TextConfig
from antoni_bridge.encoders.virchow import VIRCHOW_MODEL_ARGS, build_vit

DEMO_VIT_ARGS = {**VIRCHOW_MODEL_ARGS, "embed_dim": 48, "depth": 2, "num_heads": 3}
DEMO_PERCEIVER = PerceiverConfig(latent_dim=64, context_dim=96, mhsa_heads=4)
DEMO_WORDS = (
    "Diagnosis : carcinoma adenocarcinoma squamous cell invasive ductal lobular benign tissue tumor "
    "stain brown blue positive negative nuclei pieces of the and with in no a"
).split()
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")  # BioGPT's ids 0 to 3


def demo_vocabulary() -> tuple[dict[str, int], list[str]]:
    """A small BioGPT-style BPE vocabulary: every printable character (inside and ending a word), the demo
    words built by merges, and an unused last entry that Prism's CLS takes."""
    symbols = [c for c in string.printable if not c.isspace()]
    tokens = [*SPECIAL_TOKENS, *symbols, *(c + "</w>" for c in symbols)]
    merges: list[str] = []
    for word in DEMO_WORDS:
        pieces = [*word[:-1], word[-1] + "</w>"]
        while len(pieces) > 1:
            merges.append(f"{pieces[0]} {pieces[1]}")
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
            tokens.append(pieces[0])
    tokens.append("madeupword0000</w>")
    vocab: dict[str, int] = {}
    for token in tokens:
        vocab.setdefault(token, len(vocab))
    return vocab, list(dict.fromkeys(merges))


def demo_text_config() -> TextConfig:
    """BioGPT's layout at width 32: 4 layers (cross-attention in the upper two), 4 heads."""
    return TextConfig(
        vocab_size=len(demo_vocabulary()[0]),
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=160,
        context_dim=DEMO_PERCEIVER.latent_dim,
        image_dim=DEMO_PERCEIVER.latent_dim,
        dim_latents=48,
    )


def write_demo_tile_encoder(folder: Path, seed: int = 0) -> Path:
    """A ViT-H/14-shaped timm model, narrowed to width 48 (96-wide embeddings)."""
    torch.manual_seed(seed)
    model = build_vit("vit_huge_patch14_224", DEMO_VIT_ARGS)
    config = {
        "architecture": "vit_huge_patch14_224",
        "model_args": DEMO_VIT_ARGS,
        "pretrained_cfg": {"tag": "antoni_bridge_demo", "interpolation": "bicubic", "input_size": [3, 224, 224]},
    }
    return _save(folder, config, model.state_dict())


def write_demo_slide_encoder(folder: Path, seed: int = 0) -> Path:
    """Prism's perceiver with every depth and head count of the original, at width 64."""
    torch.manual_seed(seed)
    encoder = SlideEncoder(DEMO_PERCEIVER)
    text = demo_text_heads()
    config = {
        "model_type": "prism",
        "antoni_bridge_demo": True,
        "perceiver_config": DEMO_PERCEIVER.to_dict(),
        **text.config.to_prism_config(),
    }
    write_demo_tokenizer(folder / TOKENIZER_FOLDER)
    return _save(folder, config, {**encoder.state_dict(), **demo_text_state(text)})


def demo_text_heads() -> PrismText:
    """Random text heads drawn as BioGPT initialises (normal weights, zero biases), from the current RNG state;
    the LM head is tied to the token embeddings, as in Prism."""
    text = PrismText(demo_text_config())
    with torch.no_grad():
        for name, parameter in text.named_parameters():
            if name.endswith("bias") and "layer_norm" not in name:
                parameter.zero_()
            elif parameter.ndim == 2:
                parameter.normal_(0.0, 0.2)
        text.text_decoder.model.output_projection.weight.copy_(text.body.embed_tokens.weight)
    return text


def demo_text_state(text: PrismText) -> dict[str, torch.Tensor]:
    """The text keys as Prism publishes them: the tied LM head is not stored."""
    return {k: v for k, v in text.state_dict().items() if k != TIED_HEAD}


def write_demo_tokenizer(folder: Path) -> Path:
    vocab, merges = demo_vocabulary()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, indent=0), encoding="utf-8")
    (folder / "merges.txt").write_text("".join(f"{m} 1\n" for m in merges), encoding="utf-8")
    return folder


def _save(folder: Path, config: dict[str, object], state: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return folder
