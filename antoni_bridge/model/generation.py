"""Token-by-token generation, our own loop over the model's KV cache.

transformers 5's `Gemma3ForConditionalGeneration.generate` refuses `inputs_embeds` alone, and we
need the loop anyway: streaming each token to a callback, cancelling between tokens, and keeping the
KV cache of a conversation so a follow-up feeds only its new tokens.
"""

from __future__ import annotations

import copy
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from antoni_bridge.errors import BridgeError
from antoni_bridge.model.options import GenerationOptions


@dataclass
class Generated:
    token_ids: list[int]
    text: str
    stop_reason: str  # "stop" (end of turn or eos), "length" or "cancelled"
    prompt_tokens: int
    reused_tokens: int  # prompt tokens whose keys and values came from the prefix cache
    first_token_s: float
    total_s: float

    @property
    def tokens_per_s(self) -> float:
        decode_s = self.total_s - self.first_token_s
        return (len(self.token_ids) - 1) / decode_s if len(self.token_ids) > 1 and decode_s > 0 else 0.0


@dataclass
class CachedPrefix:
    """A conversation's KV cache and the exact token ids it holds, for one image (latents key)."""

    key: str
    ids: list[int]
    cache: Any  # transformers DynamicCache
    image: str = ""  # digest of the latents the image block was made from
    snapshot: tuple[list[int], Any] | None = None  # ids and a copy of the cache after the first prefill

    def keep_snapshot(self) -> None:
        """Remember the cache as it is now (image block and first question): sliding-window layers cannot
        be cropped once a long answer has passed their window, but a copy from before can be resumed."""
        self.snapshot = (list(self.ids), copy.deepcopy(self.cache))

    def restore_snapshot(self) -> bool:
        if self.snapshot is None:
            return False
        ids, cache = self.snapshot
        self.ids, self.cache = list(ids), copy.deepcopy(cache)
        return True


@dataclass
class PrefixCache:
    """The last few conversations' KV caches; a follow-up finds its own and feeds only what is new."""

    capacity: int = 2
    entries: OrderedDict[str, CachedPrefix] = field(default_factory=OrderedDict)

    def take(self, key: str, ids: list[int], image: str) -> CachedPrefix | None:
        """The cached prefix of `ids` for `key` and these latents, trimmed to the longest common prefix
        (None when unusable)."""
        entry = self.entries.pop(key, None)
        if entry is None or entry.image != image:
            return None
        common = 0
        for a, b in zip(entry.ids, ids, strict=False):
            if a != b:
                break
            common += 1
        common = min(common, len(ids) - 1)  # the last prompt token is always fed, to get its logits
        if common <= 0:
            return None
        if common < len(entry.ids):
            try:
                entry.cache.crop(common - len(entry.ids))  # transformers 5 takes how many tokens to drop, negative
                entry.ids = entry.ids[:common]
            except (RuntimeError, ValueError):  # sliding-window layers past their window cannot roll back
                snapshot_ids = entry.snapshot[0] if entry.snapshot else None
                if snapshot_ids is None or ids[: len(snapshot_ids)] != snapshot_ids or len(snapshot_ids) >= len(ids):
                    return None
                entry.restore_snapshot()
        return entry

    def put(self, entry: CachedPrefix) -> None:
        self.entries[entry.key] = entry
        self.entries.move_to_end(entry.key)
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)

    def clear(self) -> None:
        self.entries.clear()


Step = Callable[[torch.Tensor], torch.Tensor]  # next token id (1, 1) -> logits (vocab,)


def sample(logits: torch.Tensor, options: GenerationOptions, generator: torch.Generator | None) -> int:
    """The next token from CPU float logits (one small copy per token; seeded runs agree on every device)."""
    if not bool(torch.isfinite(logits).any()):
        raise BridgeError("The model produced no finite scores (NaN).", "check the latents; embed the slide again")
    if options.greedy:
        return int(logits.argmax())
    logits = logits / options.temperature
    if options.top_k:
        kth = torch.topk(logits, min(options.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if options.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        outside = sorted_probs.cumsum(0) - sorted_probs > options.top_p
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))


UTF8_MAX_BYTES = 4  # a byte-level token holds at least one byte


class TextStream:
    """Turns a growing list of token ids into text deltas without re-decoding everything each time, and
    without emitting half of a multi-byte character (byte-level tokens can split one). A character has at
    most UTF8_MAX_BYTES bytes: bytes that stay invalid past that are shown (as U+FFFD), not held for ever."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.prefix_offset = 0
        self.read_offset = 0
        self.text = ""  # everything emitted so far: the answer is exactly this

    def delta(self, tokens: list[int]) -> str:
        done = self.tokenizer.decode(tokens[self.prefix_offset : self.read_offset], skip_special_tokens=True)
        grown = self.tokenizer.decode(tokens[self.prefix_offset :], skip_special_tokens=True)
        unfinished = grown.endswith("\ufffd") and len(tokens) - self.read_offset < UTF8_MAX_BYTES
        if len(grown) <= len(done) or unfinished:
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(tokens)
        self.text += grown[len(done) :]
        return grown[len(done) :]

    def flush(self, tokens: list[int]) -> str:
        """At the end: what is still held back, less an unfinished character."""
        tail = self.tokenizer.decode(tokens[self.prefix_offset :], skip_special_tokens=True)
        done = self.tokenizer.decode(tokens[self.prefix_offset : self.read_offset], skip_special_tokens=True)
        rest = tail[len(done) :].rstrip("\ufffd") if tail.startswith(done) else ""
        self.text += rest
        return rest


def decode(
    first_logits: torch.Tensor,
    step: Step,
    tokenizer: Any,
    stops: tuple[int, ...],
    options: GenerationOptions,
    fed: list[int],
    on_text: Callable[[str], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> tuple[list[int], str, str]:
    """Sample until a stop token, the length limit or cancellation, streaming text as it grows.

    `fed` is extended with every token fed back to the model, so the caller knows what the cache holds.
    Returns (generated ids, the text exactly as streamed, stop reason).
    """
    stream = TextStream(tokenizer)
    tokens, reason = _sample_until_done(first_logits, step, stream, stops, options, fed, on_text, cancelled)
    if (rest := stream.flush(tokens)) and on_text is not None:
        on_text(rest)
    return tokens, stream.text, reason


def _sample_until_done(
    logits: torch.Tensor,
    step: Step,
    stream: TextStream,
    stops: tuple[int, ...],
    options: GenerationOptions,
    fed: list[int],
    on_text: Callable[[str], None] | None,
    cancelled: Callable[[], bool] | None,
) -> tuple[list[int], str]:
    generator = torch.Generator().manual_seed(options.seed) if options.seed is not None else None
    tokens: list[int] = []
    while True:
        if cancelled is not None and cancelled():
            return tokens, "cancelled"
        token = sample(logits, options, generator)
        if token in stops:
            return tokens, "stop"
        tokens.append(token)
        text = stream.delta(tokens)
        if text and on_text is not None:
            on_text(text)
        if len(tokens) >= options.max_new_tokens:
            return tokens, "length"
        logits = step(torch.tensor([[token]])).float().cpu()
        fed.append(token)


def timed_decode(
    prefill: Callable[[], torch.Tensor],
    step: Step,
    tokenizer: Any,
    stops: tuple[int, ...],
    options: GenerationOptions,
    fed: list[int],
    prompt_tokens: int,
    reused: int,
    on_text: Callable[[str], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> Generated:
    """Prefill, then `decode`, measuring the time to the first token (logits on the host, so a GPU has
    finished) and to the whole answer."""
    options.check()
    start = time.perf_counter()
    first_logits = prefill().float().cpu()
    first_token_s = time.perf_counter() - start
    tokens, text, reason = decode(first_logits, step, tokenizer, stops, options, fed, on_text, cancelled)
    return Generated(tokens, text, reason, prompt_tokens, reused, first_token_s, time.perf_counter() - start)
