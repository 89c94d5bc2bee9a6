"""The slide encoder: our implementation of Prism's perceiver, loading the published weights.

Prism (paige-ai/Prism) aggregates a slide's Virchow tile embeddings with a perceiver: 513 learned
queries (row 0 becomes the slide embedding, rows 1-512 the image latents) cross-attend to the tiles
with one head, then pass a stack of self-attention blocks; this repeats `perceiver_depth` times.
Cross-attention blocks are distinct up to `share_xattn_start_layer` and shared after it (with their
keys and values computed once); the self-attention stack is shared from `share_tf_start_layer` on.
Every block is pre-norm with residuals; feed-forwards are GEGLU (value half first, exact GELU gate).

Module names reproduce the published state-dict keys (`image_resampler.perceiver.layers.0.xattn...`),
shared blocks stored once; the aliases some exports contain and the text decoder's keys are dropped
on load after a check. The BioGPT text decoder and contrastive heads (not needed for ANTONI) load
separately, from the same folder (encoders/prism_text.py). Runs on any transformers version: nothing
here depends on it.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from antoni_bridge.encoders import PRISM_ID
from antoni_bridge.encoders.sources import (
    describe_keys,
    read_config,
    read_state_dict,
    resolve_model_dir,
    weights_identity,
)
from antoni_bridge.errors import BridgeError

PREFIX = "image_resampler."
IGNORED_PREFIXES = ("text_decoder.", "img_to_latents.", "text_to_latents.", "temperature")


@dataclass(frozen=True)
class PerceiverConfig:
    """Field names and defaults as in Prism's published `perceiver_config`."""

    latent_seq: int = 512
    latent_dim: int = 1280
    context_dim: int = 2560
    mhsa_heads: int = 8
    perceiver_depth: int = 8
    transformer_depth: int = 6
    share_xattn_start_layer: int = 1
    share_tf_start_layer: int = 0
    xattn_heads: int = 1
    mlp_mult: int = 1
    mlp_activation: str = "geglu"

    @classmethod
    def from_dict(cls, values: dict[str, object]) -> PerceiverConfig:
        known = {f.name for f in fields(cls)}
        try:
            config = cls(**{k: v for k, v in values.items() if k in known})  # type: ignore[arg-type]
            sizes = [getattr(config, f.name) for f in fields(cls) if f.type == "int"]
            valid = all(isinstance(v, int) and v >= 0 for v in sizes) and config.latent_dim > 0
            valid = valid and config.latent_dim % config.mhsa_heads == 0 and config.latent_dim % config.xattn_heads == 0
        except (TypeError, ZeroDivisionError):
            valid = False
        if not valid:
            raise BridgeError(f"The Prism perceiver config is not valid: {values}.", "download the model again")
        return config

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class GEGLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = x.chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int, activation: str) -> None:
        super().__init__()
        if activation not in ("geglu", "gelu"):
            raise BridgeError(f"Prism feed-forward activation {activation!r} is not supported.", "use geglu")
        hidden = dim * mult
        self.norm = nn.LayerNorm(dim)
        widen = 2 * hidden if activation == "geglu" else hidden
        act = GEGLU() if activation == "geglu" else nn.GELU()
        self.net = nn.Sequential(nn.Linear(dim, widen), act, nn.Linear(hidden, dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.norm(x))


class CrossAttention(nn.Module):
    """Queries (layer-normed latents) attend to the raw tile embeddings."""

    def __init__(self, dim: int, context_dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.x_norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)
        self.recorded: list[torch.Tensor] | None = None  # attention weights, kept only while a caller asks

    def keys_values(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.to_kv(context).chunk(2, dim=-1)
        return split_heads(keys, self.heads), split_heads(values, self.heads)

    def forward(
        self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None
    ) -> torch.Tensor:
        q = split_heads(self.to_q(self.x_norm(x)), self.heads)
        if self.recorded is not None:
            weights = torch.softmax((q @ kv[0].transpose(-2, -1)).float() * q.shape[-1] ** -0.5, dim=-1)
            self.recorded.append(weights.mean(dim=1))
        attended = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=mask)
        return self.to_out(merge_heads(attended))


class SelfAttention(nn.Module):
    """Multi-head self-attention with packed q|k|v projections and no biases."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.out_proj = nn.Linear(dim, dim, bias=False)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (split_heads(t, self.heads) for t in F.linear(x, self.in_proj_weight).chunk(3, dim=-1))
        return self.out_proj(merge_heads(F.scaled_dot_product_attention(q, k, v)))


class SelfAttentionBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mha = SelfAttention(dim, heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mha(self.norm(x))


class Perceiver(nn.Module):
    def __init__(self, config: PerceiverConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.latent_dim
        self.latents = nn.Parameter(torch.randn(config.latent_seq + 1, dim))
        last_x = min(config.share_xattn_start_layer, config.perceiver_depth - 1)
        last_tf = min(config.share_tf_start_layer, config.perceiver_depth - 1)
        self.layers = nn.ModuleList()
        for index in range(max(last_x, last_tf) + 1):
            layer = nn.ModuleDict()
            if index <= last_x:
                layer["xattn"] = nn.ModuleDict(
                    {
                        "xattn": CrossAttention(dim, config.context_dim, config.xattn_heads),
                        "ff": FeedForward(dim, config.mlp_mult, config.mlp_activation),
                    }
                )
            if index <= last_tf:
                layer["tf"] = nn.ModuleList(
                    nn.ModuleDict(
                        {
                            "mhsa": SelfAttentionBlock(dim, config.mhsa_heads),
                            "ff": FeedForward(dim, config.mlp_mult, config.mlp_activation),
                        }
                    )
                    for _ in range(config.transformer_depth)
                )
            self.layers.append(layer)
        self.last_x, self.last_tf = last_x, last_tf

    def keys_values(self, context: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """The tiles' keys and values of every distinct cross-attention block: they depend on the tiles
        alone, not on the queries or the mask, so many masks of one slide can share them."""
        return {block: self.layers[block]["xattn"]["xattn"].keys_values(context) for block in range(self.last_x + 1)}

    def forward(
        self,
        context: torch.Tensor,
        mask: torch.Tensor | None,
        kv: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """`kv` (from `keys_values`, batch 1 or the batch's) replaces `context`'s own: then `context` only
        gives the batch size."""
        x = self.latents.unsqueeze(0).expand(context.shape[0], -1, -1)
        attn_mask = None if mask is None else mask[:, None, None, :]
        kv = kv if kv is not None else self.keys_values(context)
        for depth in range(self.config.perceiver_depth):
            block = min(depth, self.last_x)
            xattn = self.layers[block]["xattn"]
            keys, values = kv[block]
            batch = (x.shape[0], -1, -1, -1)
            x = xattn["xattn"](x, (keys.expand(*batch), values.expand(*batch)), attn_mask) + x
            x = xattn["ff"](x) + x
            for sub in self.layers[min(depth, self.last_tf)]["tf"]:
                x = sub["mhsa"](x) + x
                x = sub["ff"](x) + x
        return x


class PerceiverResampler(nn.Module):
    def __init__(self, config: PerceiverConfig) -> None:
        super().__init__()
        self.perceiver = Perceiver(config)
        self.cls_norm = nn.LayerNorm(config.latent_dim)
        self.img_norm = nn.LayerNorm(config.latent_dim)

    def forward(
        self,
        context: torch.Tensor,
        mask: torch.Tensor | None,
        kv: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.perceiver(context, mask, kv)
        return self.cls_norm(x[:, 0]), self.img_norm(x[:, 1:])


class SlideEncoder(nn.Module):
    """Prism's slide encoder: tile embeddings (B, N, C) -> slide embedding (B, D) and latents (B, 512, D)."""

    def __init__(self, config: PerceiverConfig, source: str = "", name: str = "prism", identity: str = "") -> None:
        super().__init__()
        self.config = config
        self.source = source
        self.name = name
        self.identity = identity or name
        self.image_resampler = PerceiverResampler(config)
        self.autocast_dtype: torch.dtype | None = None

    def forward(
        self, tile_embeddings: torch.Tensor, tile_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`tile_mask` (B, N) is True for real tiles; it is needed when slides of different sizes share a batch."""
        if tile_embeddings.ndim != 3 or tile_embeddings.shape[-1] != self.config.context_dim:
            raise BridgeError(
                f"The slide encoder takes (slides, tiles, {self.config.context_dim}) tile embeddings, "
                f"not {tuple(tile_embeddings.shape)}.",
                "embed the tiles with the tile encoder this slide encoder was trained with (Virchow v1)",
            )
        if tile_mask is not None:
            tile_mask = tile_mask.to(device=tile_embeddings.device, dtype=torch.bool)
            if not bool(tile_mask.any(dim=1).all()):
                raise BridgeError("A slide in the batch has no tile left after masking.", "drop empty slides")
        return self.image_resampler(tile_embeddings, tile_mask)

    @torch.inference_mode()
    def encode(self, tile_embeddings: torch.Tensor) -> torch.Tensor:
        """One slide's (N, C) tile embeddings -> the (513, D) ANTONI input: slide embedding, then latents."""
        device = next(self.parameters()).device
        context = tile_embeddings.to(device, torch.float32).unsqueeze(0)
        with self._autocast(device):
            embedding, latents = self(context)
        return torch.cat([embedding[:, None], latents], dim=1)[0].float().cpu()

    @torch.inference_mode()
    def encode_masked(
        self, tile_embeddings: torch.Tensor, keep: torch.Tensor, batch_size: int = 16
    ) -> Iterator[torch.Tensor]:
        """One slide's (N, C) tile embeddings under M keep-masks (M, N) -> (b, 513, D) inputs per batch of
        masks, in order, on the encoder's device (float32).

        Leaving a tile out of the mask is the same as leaving it out of the input (no positional encoding,
        no norm over the tiles): only the softmax over the tiles changes. The tiles' keys and values are
        computed once and shared by every mask; each batch holds `batch_size` masks, so memory stays at one
        batch's attention whatever M is (the caller can stop between batches).
        """
        device = next(self.parameters()).device
        if tile_embeddings.ndim != 2 or tile_embeddings.shape[1] != self.config.context_dim:
            raise BridgeError(
                f"Masked encoding takes one slide's (tiles, {self.config.context_dim}) tile embeddings, "
                f"not {tuple(tile_embeddings.shape)}.",
                "read the slide's tile features from its feature file",
            )
        context = tile_embeddings.to(device, torch.float32).unsqueeze(0)
        keep = keep.to(device=device, dtype=torch.bool)
        if keep.ndim != 2 or keep.shape[1] != context.shape[1]:
            hint = "one mask row per variant, one column per tile"
            raise BridgeError(f"Tile masks must be (masks, {context.shape[1]}), not {tuple(keep.shape)}.", hint)
        if not bool(keep.any(dim=1).all()):
            raise BridgeError("A mask leaves no tile of the slide.", "keep at least one tile in every mask")
        with self._autocast(device):
            kv = self.image_resampler.perceiver.keys_values(context)
        for start in range(0, keep.shape[0], batch_size):
            mask = keep[start : start + batch_size]
            with self._autocast(device):
                embedding, latents = self.image_resampler(context[:, :0].expand(len(mask), -1, -1), mask, kv)
            yield torch.cat([embedding[:, None], latents], dim=1).float()

    @torch.inference_mode()
    def tile_attention(self, tile_embeddings: torch.Tensor) -> torch.Tensor:
        """(513, N): how much each query reads each tile in the perceiver's last cross-attention (one slide,
        no mask), for the attention preview of evidence maps."""
        perceiver = self.image_resampler.perceiver
        block = perceiver.layers[min(perceiver.config.perceiver_depth - 1, perceiver.last_x)]["xattn"]["xattn"]
        block.recorded = []
        try:
            self.encode(tile_embeddings)
            return block.recorded[-1][0].float().cpu()
        finally:
            block.recorded = None

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager[None]:
        return torch.autocast(device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)

    def load_published_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Strictly load a Prism checkpoint: the whole model's keys or the slide encoder's alone."""
        own = self.state_dict()
        state = {k: v for k, v in state.items() if not k.startswith(IGNORED_PREFIXES)}
        state = {k if k.startswith(PREFIX) else PREFIX + k: v for k, v in state.items()}
        state = _drop_aliases(state, self.image_resampler.perceiver)
        missing = sorted(own.keys() - state.keys())
        unexpected = sorted(state.keys() - own.keys())
        wrong = sorted(k for k in own.keys() & state.keys() if own[k].shape != state[k].shape)
        if missing or unexpected or wrong:
            raise BridgeError(
                f"The slide encoder weights do not fit Prism's perceiver "
                f"(missing: {describe_keys(missing)}; unexpected: {describe_keys(unexpected)}; "
                f"wrong shape: {describe_keys(wrong)}).",
                "give the paige-ai/Prism weights or a folder made by antoni-bridge",
            )
        self.load_state_dict(state, strict=True)


_ALIAS = re.compile(r"^image_resampler\.perceiver\.layers\.(\d+)\.(xattn|tf)\.(.*)$")


def _drop_aliases(state: dict[str, torch.Tensor], perceiver: Perceiver) -> dict[str, torch.Tensor]:
    """Remove copies of shared blocks (exports that list them under every layer), checking they are copies."""
    kept: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        match = _ALIAS.match(key)
        if match is not None:
            depth, kind, rest = int(match.group(1)), match.group(2), match.group(3)
            owner = min(depth, perceiver.last_x if kind == "xattn" else perceiver.last_tf)
            canonical = f"{PREFIX}perceiver.layers.{owner}.{kind}.{rest}"
            if canonical != key and canonical in state and torch.equal(state[canonical], value):
                continue
        kept[key] = value
    return kept


def load_slide_encoder(
    source: str | os.PathLike[str] = PRISM_ID, device: str | torch.device = "cpu", precision: str = "bf16"
) -> SlideEncoder:
    """Load Prism's perceiver from a folder, the HF cache or the hub (transformers not involved)."""
    folder = resolve_model_dir(source, "slide encoder")
    config = read_config(folder)
    values = config.get("perceiver_config", config)
    if not isinstance(values, dict) or "latent_dim" not in values:
        raise BridgeError(f"{folder} does not hold a Prism model (no perceiver_config).", "give paige-ai/Prism")
    name = "prism-demo" if config.get("antoni_bridge_demo") else "prism"
    identity = f"{name}@{weights_identity(folder)}"
    encoder = SlideEncoder(PerceiverConfig.from_dict(values), source=str(source), name=name, identity=identity)
    encoder.load_published_state_dict(read_state_dict(folder, "slide encoder"))
    device = torch.device(device)
    encoder = encoder.to(device).eval()
    if device.type == "cuda" and precision != "fp32":  # stored in the autocast dtype: half the memory
        encoder.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        encoder.to(encoder.autocast_dtype)
    return encoder


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(batch, tokens, width) -> (batch, heads, tokens, width / heads), as attention takes it."""
    b, n, d = x.shape
    return x.view(b, n, heads, d // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """The inverse of `split_heads`."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)
