"""Prism's text side, our implementation: a BioGPT decoder with cross-attention to the slide latents, and
the contrastive text and image heads, loading the published weights under their published key names.

Prism (paige-ai/Prism) is CoCa-shaped. Its text model is BioGPT (pre-norm decoder layers, learned positions
offset by 2, embeddings scaled by sqrt(width), exact GELU, a final LayerNorm, an LM head without bias) whose
upper half (layers from `num_hidden_layers // 2` on) gains a cross-attention block between self-attention and
feed-forward: queries from the text, keys and values from the 512 image latents, all heads, with biases.
- Contrastive text embedding: a CLS token (the vocabulary's last entry, 42383) is appended after the prompt;
  its hidden state entering the first cross-attention layer (the text-only half) goes through
  `text_to_latents` and is L2-normalised. The slide embedding goes through `img_to_latents`; similarities
  are scaled by exp(temperature).
- Report: generation starts from `</s>` (BioGPT's BOS) plus the prompt, greedy or beam search.

Module names reproduce the published keys (`text_decoder.model.biogpt.layers.12.x_attn.k_proj.weight`,
`text_decoder.model.output_projection.weight` (tied to the token embeddings, so it may be absent),
`img_to_latents.to_latents.weight`, `text_to_latents.to_latents.weight`, `temperature`). Nothing here depends
on transformers except the tokenizer class (BioGptTokenizer, present in every version we support).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from antoni_bridge.encoders import PRISM_ID
from antoni_bridge.encoders.prism import merge_heads, split_heads
from antoni_bridge.encoders.sources import describe_keys, read_config, read_state_dict, resolve_model_dir
from antoni_bridge.errors import BridgeError

TEXT_PREFIXES = ("text_decoder.", "img_to_latents.", "text_to_latents.", "temperature")
TIED_HEAD = "text_decoder.model.output_projection.weight"
TIED_TO = "text_decoder.model.biogpt.embed_tokens.weight"
POSITION_OFFSET = 2  # BioGPT's learned positions start at index 2
TOKENIZER_FOLDER = "biogpt"  # where Prism's repository keeps BioGPT's vocab.json and merges.txt
Cache = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class TextConfig:
    """The fields of Prism's `biogpt_config` we use (names as published), plus its context and latent widths."""

    vocab_size: int = 42384
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    max_position_embeddings: int = 1024
    scale_embedding: bool = True
    pad_token_id: int = 1
    eos_token_id: int = 2
    context_dim: int = 1280  # Prism's `biogpt_context_dim`: the latents' width
    image_dim: int = 1280  # the slide embedding's width (the perceiver's latent_dim)
    dim_latents: int = 5120

    @property
    def first_x_attn_layer(self) -> int:
        return self.num_hidden_layers // 2

    @property
    def cls_token_id(self) -> int:
        """Prism's CLS is an unused entry, the vocabulary's last (42383, "madeupword0006</w>")."""
        return self.vocab_size - 1

    @classmethod
    def from_prism_config(cls, config: dict[str, Any]) -> TextConfig:
        biogpt = config.get("biogpt_config")
        perceiver = config.get("perceiver_config", {})
        if not isinstance(biogpt, dict) or not isinstance(perceiver, dict):
            raise BridgeError(
                "This Prism folder has no text heads (no biogpt_config in its config.json).",
                "give the full paige-ai/Prism folder, or demo weights made by this version of antoni-bridge",
            )
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in biogpt.items() if k in known}
        values["context_dim"] = config.get("biogpt_context_dim", cls.context_dim)
        values["image_dim"] = perceiver.get("latent_dim", cls.image_dim)
        values["dim_latents"] = config.get("dim_latents", cls.dim_latents)
        try:
            text = cls(**values)
            valid = text.hidden_size % text.num_attention_heads == 0 and text.vocab_size > 3
            valid = valid and all(isinstance(getattr(text, f.name), int) for f in fields(cls))
        except (TypeError, ZeroDivisionError):
            valid = False
        if not valid:
            raise BridgeError(f"Prism's biogpt_config is not valid: {biogpt}.", "download the model again")
        return text

    def to_prism_config(self) -> dict[str, Any]:
        """The config.json entries that describe these heads, as Prism's config names them."""
        biogpt = {k: v for k, v in asdict(self).items() if k not in ("context_dim", "image_dim", "dim_latents")}
        biogpt |= {"model_type": "biogpt", "hidden_act": "gelu", "bos_token_id": 0}
        return {"biogpt_config": biogpt, "biogpt_context_dim": self.context_dim, "dim_latents": self.dim_latents}


class Attention(nn.Module):
    """BioGPT's attention: separate q, k, v, out projections with biases; keys/values from `kv_dim` inputs."""

    def __init__(self, dim: int, heads: int, kv_dim: int | None = None) -> None:
        super().__init__()
        self.heads = heads
        self.k_proj = nn.Linear(kv_dim or dim, dim)
        self.v_proj = nn.Linear(kv_dim or dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return split_heads(self.k_proj(x), self.heads), split_heads(self.v_proj(x), self.heads)

    def forward(
        self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None
    ) -> torch.Tensor:
        q = split_heads(self.q_proj(x), self.heads)
        return self.out_proj(merge_heads(F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=mask)))


class DecoderLayer(nn.Module):
    """Pre-norm self-attention, then (upper half only) cross-attention to the latents, then the MLP."""

    def __init__(self, config: TextConfig, cross: bool) -> None:
        super().__init__()
        dim, heads = config.hidden_size, config.num_attention_heads
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, heads)
        if cross:
            self.x_attn_layer_norm = nn.LayerNorm(dim)
            self.x_attn = Attention(dim, heads, config.context_dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, dim)
        self.cross = cross

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor] | None,
        context_kv: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        normed = self.self_attn_layer_norm(x)
        keys, values = self.self_attn.keys_values(normed)
        if past is not None:
            keys, values = torch.cat([past[0], keys], dim=2), torch.cat([past[1], values], dim=2)
        x = x + self.self_attn(normed, (keys, values), mask)
        if self.cross:
            if context_kv is None:
                raise BridgeError("Prism's report decoder needs the slide latents.", "embed the slide first")
            x = x + self.x_attn(self.x_attn_layer_norm(x), context_kv, None)
        x = x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))
        return x, (keys, values)


class BioGpt(nn.Module):
    """The body (`text_decoder.model.biogpt.*`)."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.hidden_size
        self.embed_tokens = nn.Embedding(config.vocab_size, dim, config.pad_token_id)
        self.embed_positions = nn.Embedding(config.max_position_embeddings + POSITION_OFFSET, dim)
        first = config.first_x_attn_layer
        self.layers = nn.ModuleList(DecoderLayer(config, i >= first) for i in range(config.num_hidden_layers))
        self.layer_norm = nn.LayerNorm(dim)
        self.embed_scale = math.sqrt(dim) if config.scale_embedding else 1.0

    def embed(self, ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        """Token embeddings plus positions counted over the non-padding tokens (`attention`, all so far)."""
        positions = (attention.cumsum(dim=1) * attention - 1)[:, -ids.shape[1] :]
        return self.embed_tokens(ids) * self.embed_scale + self.embed_positions(positions + POSITION_OFFSET)

    def run(
        self,
        ids: torch.Tensor,
        attention: torch.Tensor,
        *,
        layers: int | None = None,
        past: Cache | None = None,
        context_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> tuple[torch.Tensor, Cache]:
        """Hidden states after the first `layers` layers (all: with the final LayerNorm) and the new cache."""
        if attention.shape[1] > self.config.max_position_embeddings:
            raise BridgeError(
                f"Prism's text model takes at most {self.config.max_position_embeddings} tokens.",
                "ask for fewer new tokens or use a shorter prompt",
            )
        x = self.embed(ids, attention)
        mask = _causal_mask(attention, ids.shape[1], x.dtype)
        cache: Cache = []
        count = self.config.num_hidden_layers if layers is None else layers
        for index, layer in enumerate(self.layers[:count]):
            kv = context_kv[index] if context_kv is not None and layer.cross else None
            x, kept = layer(x, mask, past[index] if past is not None else None, kv)
            cache.append(kept)
        return (self.layer_norm(x) if layers is None else x), cache


class CausalLM(nn.Module):
    """`text_decoder.model`: the body and its LM head (tied to the token embeddings when published without one)."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.biogpt = BioGpt(config)
        self.output_projection = nn.Linear(config.hidden_size, config.vocab_size, bias=False)


class TextDecoder(nn.Module):
    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.model = CausalLM(config)


class ToLatents(nn.Module):
    """A contrastive projection: linear without bias, then L2 normalisation."""

    def __init__(self, dim: int, dim_latents: int) -> None:
        super().__init__()
        self.to_latents = nn.Linear(dim, dim_latents, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.to_latents(x), dim=-1)


@dataclass
class Generated:
    token_ids: list[int]  # the new tokens, without the prompt
    stop_reason: str  # stop (end of sequence) or length


class PrismText(nn.Module):
    """Prism's text decoder and contrastive heads: zero-shot similarities and report generation."""

    def __init__(self, config: TextConfig, identity: str = "") -> None:
        super().__init__()
        self.config = config
        self.identity = identity
        self.text_decoder = TextDecoder(config)
        self.img_to_latents = ToLatents(config.image_dim, config.dim_latents)
        self.text_to_latents = ToLatents(config.hidden_size, config.dim_latents)
        self.temperature = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.tokenizer: Any = None  # transformers' BioGptTokenizer, set by load_prism_text

    @property
    def body(self) -> BioGpt:
        return self.text_decoder.model.biogpt

    # ------------------------------------------------------------------ contrastive

    def prompt_ids(self, token_lists: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prism's zero-shot batch: `</s>` + tokens + `</s>` per prompt, right-padded to the longest, the last
        column dropped (so the longest prompt loses its closing `</s>`, as in Prism), then CLS appended."""
        c = self.config
        rows = [[c.eos_token_id, *tokens, c.eos_token_id] for tokens in token_lists]
        width = max(map(len, rows))
        padded = [[*(row + [c.pad_token_id] * (width - len(row)))[:-1], c.cls_token_id] for row in rows]
        ids = torch.tensor(padded, device=self.temperature.device)
        return ids, (ids != c.pad_token_id).long()

    @torch.inference_mode()
    def text_embeddings(self, token_lists: list[list[int]]) -> torch.Tensor:
        """(prompts, dim_latents) normalised text projections: the CLS state before the first cross-attention."""
        ids, attention = self.prompt_ids(token_lists)
        hidden, _ = self.body.run(ids, attention, layers=self.config.first_x_attn_layer)
        return self.text_to_latents(hidden[:, -1])

    @torch.inference_mode()
    def similarities(self, image_embeddings: torch.Tensor, token_lists: list[list[int]]) -> torch.Tensor:
        """(images, prompts) scaled cosine similarities, Prism's zero-shot logits."""
        images = self.img_to_latents(image_embeddings.to(self.temperature))
        return images @ self.text_embeddings(token_lists).T * self.temperature.exp()

    def label_probabilities(self, image_embeddings: torch.Tensor, prompts: list[list[list[int]]]) -> torch.Tensor:
        """(images, labels): a softmax over every prompt of every label, summed per label (Prism's zero_shot)."""
        flat = [tokens for label in prompts for tokens in label]
        probabilities = torch.softmax(self.similarities(image_embeddings, flat).float(), dim=-1)
        bounds = torch.tensor([0, *[len(label) for label in prompts]]).cumsum(0).tolist()
        return torch.stack([probabilities[:, a:b].sum(-1) for a, b in itertools.pairwise(bounds)], -1)

    # ------------------------------------------------------------------ generation

    def context_kv(self, latents: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each cross-attention layer's keys and values of the latents (B, 512, context_dim), computed once."""
        latents = latents.to(self.temperature)
        return [
            layer.x_attn.keys_values(latents) if layer.cross else (latents[:0], latents[:0])
            for layer in self.body.layers
        ]

    def step(
        self, ids: torch.Tensor, attention: torch.Tensor, past: Cache | None, context_kv: list
    ) -> tuple[torch.Tensor, Cache]:
        """Log-probabilities of the next token after `ids` (the cache holds what came before) and the cache."""
        hidden, cache = self.body.run(ids, attention, past=past, context_kv=context_kv)
        logits = self.text_decoder.model.output_projection(hidden[:, -1])
        return torch.log_softmax(logits.float(), dim=-1), cache

    @torch.inference_mode()
    def generate(
        self,
        latents: torch.Tensor,
        prompt: list[int],
        max_new_tokens: int,
        beams: int = 1,
        on_step: Callable[[list[int]], None] | None = None,
    ) -> Generated:
        """Continue `</s>` + `prompt` over one slide's latents (512, context_dim); greedy when `beams` is 1.
        `on_step(best ids so far)` runs after every token: to stream, report progress, or raise (a cancel)."""
        start = [self.config.eos_token_id, *prompt]
        room = self.config.max_position_embeddings - len(start)
        if room < 1:
            raise BridgeError("The report prompt is longer than Prism's text model takes.", "use a shorter prompt")
        limit = min(max_new_tokens, room)
        search = _greedy if beams == 1 else _beam_search
        return search(self, latents[None], start, limit, beams, on_step or (lambda ids: None))


def _greedy(model: PrismText, latents: torch.Tensor, start: list[int], limit: int, beams: int, on_step) -> Generated:
    context_kv = model.context_kv(latents)
    ids = torch.tensor([start], device=model.temperature.device)
    attention = torch.ones_like(ids)
    past: Cache | None = None
    new: list[int] = []
    while len(new) < limit:
        log_probs, past = model.step(ids, attention, past, context_kv)
        token = int(log_probs[0].argmax())
        if token == model.config.eos_token_id:
            return Generated(new, "stop")
        new.append(token)
        on_step(new)
        ids = torch.tensor([[token]], device=ids.device)
        attention = torch.cat([attention, torch.ones_like(ids)], dim=1)
    return Generated(new, "length")


def _beam_search(
    model: PrismText, latents: torch.Tensor, start: list[int], limit: int, beams: int, on_step
) -> Generated:
    """Beam search as transformers' generate runs it by default (length penalty 1, no early stopping): each step
    keeps the best `beams` of 2 x `beams` candidates; a candidate ending in `</s>` among the first `beams`
    becomes a finished hypothesis scored by its summed log-probability over its new length (`</s>` counted);
    the search ends when the best running beam's score over its length cannot beat the worst of `beams`
    finished ones, or at the length limit."""
    eos, device = model.config.eos_token_id, model.temperature.device
    context_kv = [(k.expand(beams, -1, -1, -1), v.expand(beams, -1, -1, -1)) for k, v in model.context_kv(latents)]
    ids = torch.tensor([start] * beams, device=device)
    attention = torch.ones_like(ids)
    scores = torch.full((beams,), -1e9, device=device)
    scores[0] = 0.0  # the beams start identical: only one may expand at first
    sequences: list[list[int]] = [[] for _ in range(beams)]
    finished: list[tuple[float, list[int], str]] = []
    past: Cache | None = None
    for length in range(1, limit + 1):
        log_probs, past = model.step(ids, attention, past, context_kv)
        totals = (log_probs + scores[:, None]).view(-1)
        top, order = totals.topk(2 * beams)
        vocab = log_probs.shape[-1]
        chosen: list[tuple[int, int, float]] = []
        for rank, (score, flat) in enumerate(zip(top.tolist(), order.tolist(), strict=True)):
            beam, token = divmod(flat, vocab)
            if token == eos:
                if rank < beams:
                    finished.append((score / length, sequences[beam], "stop"))
            else:
                chosen.append((beam, token, score))
            if len(chosen) == beams:
                break
        finished = sorted(finished, key=lambda item: -item[0])[:beams]
        origin = torch.tensor([beam for beam, _, _ in chosen], device=device)
        sequences = [[*sequences[beam], token] for beam, token, _ in chosen]
        scores = torch.tensor([score for _, _, score in chosen], device=device)
        past = [(k[origin], v[origin]) for k, v in past]
        on_step(sequences[0])
        if len(finished) == beams and finished[-1][0] >= chosen[0][2] / length:
            return _best(finished)
        ids = torch.tensor([[token] for _, token, _ in chosen], device=device)
        attention = torch.cat([attention, torch.ones_like(ids)], dim=1)
    finished += [
        (score / limit, sequence, "length") for score, sequence in zip(scores.tolist(), sequences, strict=True)
    ]
    return _best(finished)


def _best(finished: list[tuple[float, list[int], str]]) -> Generated:
    _, sequence, reason = max(finished, key=lambda item: item[0])
    return Generated(sequence, reason)


def _causal_mask(attention: torch.Tensor, new: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, new, all) additive mask: causal over all tokens so far, padding keys blocked (as BioGPT's)."""
    total = attention.shape[1]
    query = torch.arange(total - new, total, device=attention.device)[:, None]
    allowed = (torch.arange(total, device=attention.device)[None, :] <= query)[None] & attention[:, None, :].bool()
    return torch.zeros(allowed.shape, dtype=dtype, device=attention.device).masked_fill(
        ~allowed, torch.finfo(dtype).min
    )[:, None]


# ---------------------------------------------------------------------- loading


def text_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The text heads' part of a Prism checkpoint, the LM head tied to the token embeddings when absent."""
    kept = {k: v for k, v in state.items() if k.startswith(TEXT_PREFIXES)}
    if TIED_HEAD not in kept and TIED_TO in kept:
        kept[TIED_HEAD] = kept[TIED_TO]
    return kept


def load_text_state(model: PrismText, state: dict[str, torch.Tensor]) -> None:
    """Strictly load the published text keys; a clear error names what is missing, extra or mis-shaped."""
    state = text_state(state)
    own = model.state_dict()
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    wrong = sorted(k for k in own.keys() & state.keys() if own[k].shape != state[k].shape)
    if len(missing) == len(own):
        raise BridgeError(
            "These Prism weights hold no text heads (no text_decoder, img_to_latents or text_to_latents keys).",
            "give the full paige-ai/Prism weights, or demo weights made by this version of antoni-bridge",
        )
    if missing or unexpected or wrong:
        raise BridgeError(
            f"Prism's text heads do not fit our BioGPT decoder (missing: {describe_keys(missing)}; "
            f"unexpected: {describe_keys(unexpected)}; wrong shape: {describe_keys(wrong)}).",
            "give the paige-ai/Prism weights or a folder made by antoni-bridge",
        )
    model.load_state_dict(state, strict=True)


def load_tokenizer(folder: Path) -> Any:
    """transformers' BioGptTokenizer from the Prism folder's `biogpt/` files (Moses + BPE; needs sacremoses)."""
    where = folder / TOKENIZER_FOLDER
    if not (where / "vocab.json").is_file() or not (where / "merges.txt").is_file():
        raise BridgeError(
            f"The Prism folder {folder} has no BioGPT tokenizer ({TOKENIZER_FOLDER}/vocab.json and merges.txt).",
            "download the whole paige-ai/Prism repository (its biogpt/ folder holds them)",
        )
    try:
        import sacremoses  # noqa: F401  (BioGptTokenizer imports it late, with a message about pip)
    except ImportError:
        raise BridgeError(
            "Prism's tokenizer needs the sacremoses package, which is not installed.", "pip install sacremoses"
        ) from None
    from transformers import BioGptTokenizer

    return BioGptTokenizer(str(where / "vocab.json"), str(where / "merges.txt"))


def load_prism_text(source: str | os.PathLike[str] = PRISM_ID, device: str | torch.device = "cpu") -> PrismText:
    """Prism's text heads and tokenizer from the same folder as its perceiver (fp32: they are small next to it)."""
    from antoni_bridge.encoders.sources import weights_identity

    folder = resolve_model_dir(source, "slide encoder")
    config = TextConfig.from_prism_config(read_config(folder))
    model = PrismText(config, identity=f"prism-text@{weights_identity(folder)}")
    load_text_state(model, read_state_dict(folder, "slide encoder"))
    model.tokenizer = load_tokenizer(folder)
    return model.to(device).eval()
