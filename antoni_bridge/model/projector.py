"""The projector: attention pooling of the slide latents into a fixed number of LLM tokens.

256 learned queries attend (non-causally, no positional encoding) to the (513, 1280) Prism rows;
queries and keys are 1280 wide, values twice the LLM width split over the same heads, so the pooled
tokens come out at the LLM width, then `out_proj`, an optional FFN residual (off in the release) and
a LayerNorm. Key names match the published checkpoint (`projection_layer.query_tokens`, ...).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from antoni_bridge.model.config import AntoniConfig


class AttentionPoolingProjector(nn.Module):
    def __init__(self, config: AntoniConfig, llm_width: int) -> None:
        super().__init__()
        dim = config.projector_input_dim
        self.query_heads = config.projector_num_query_heads
        self.kv_heads = config.projector_num_kv_heads
        if self.query_heads % self.kv_heads or dim % self.query_heads or llm_width % self.query_heads:
            raise ValueError("projector heads must divide the widths, and kv heads the query heads")
        kv_dim = dim // self.query_heads * self.kv_heads
        self.query_tokens = nn.Parameter(torch.empty(1, config.projector_num_output_tokens, dim))
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, kv_dim, bias=False)
        self.v_proj = nn.Linear(dim, llm_width // self.query_heads * self.kv_heads, bias=False)
        self.out_proj = nn.Linear(llm_width, llm_width, bias=False)
        self.ffn = None
        if config.projector_ffn_hidden_dim:
            hidden = config.projector_ffn_hidden_dim
            self.ffn = nn.Sequential(nn.Linear(llm_width, hidden), nn.GELU(), nn.Linear(hidden, llm_width))
        self.layer_norm = nn.LayerNorm(llm_width)
        self.dropout = config.projector_dropout
        nn.init.xavier_uniform_(self.query_tokens)

    def forward(self, latents: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, dim) latents -> (B, tokens, llm_width). `mask` (B, N) is True where a row is valid.

        (The published code passes True for "masked" to an API where True means "attend"; it never
        passes a mask, so only this corrected meaning is implemented.)
        """
        batch = latents.shape[0]
        queries = self.query_tokens.expand(batch, -1, -1)
        q = _heads(self.q_proj(queries), self.query_heads)
        k = _heads(self.k_proj(latents), self.kv_heads)
        v = _heads(self.v_proj(latents), self.kv_heads)
        if self.kv_heads != self.query_heads:
            repeat = self.query_heads // self.kv_heads
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        attn_mask = None if mask is None else mask[:, None, None, :].to(torch.bool)
        dropout = self.dropout if self.training else 0.0
        pooled = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
        x = self.out_proj(pooled.transpose(1, 2).reshape(batch, q.shape[2], -1))
        if self.ffn is not None:
            x = x + self.ffn(x)
        return self.layer_norm(x)

    def attention(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, tokens, rows): how much each image token reads each latent row, averaged over heads (for the
        attention preview of evidence maps; the forward pass never materialises these weights)."""
        batch = latents.shape[0]
        q = _heads(self.q_proj(self.query_tokens.expand(batch, -1, -1)), self.query_heads)
        k = _heads(self.k_proj(latents), self.kv_heads).repeat_interleave(self.query_heads // self.kv_heads, dim=1)
        return torch.softmax(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5, dim=-1).mean(dim=1)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, d = x.shape
    return x.view(b, n, heads, d // heads).transpose(1, 2)
