"""Decoding options and their one set of defaults, shared by every front end and the daemon.

Front ends send only what the user set; the engine fills the rest from `DEFAULT_DECODING`, so the same
question gets the same answer through the CLI, batch, the desk, the QuPath panel and the Python client.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from antoni_bridge.errors import BridgeError

WHOLE_NUMBERS = ("max_new_tokens", "top_k", "seed")  # a Java client may send 6.0


@dataclass(frozen=True)
class GenerationOptions:
    max_new_tokens: int = 1024
    greedy: bool = True  # the published evaluation decodes greedily
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None

    def check(self) -> None:
        if self.max_new_tokens < 1 or self.temperature <= 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise BridgeError(
                "Generation options out of range.",
                "max_new_tokens >= 1, temperature > 0, 0 < top_p <= 1, top_k >= 0",
            )


DEFAULT_DECODING = GenerationOptions()


def options_from(given: dict[str, Any] | None) -> GenerationOptions:
    """The defaults with what a request set laid over them (names as in the protocol)."""
    values = {k: v for k, v in (given or {}).items() if v is not None}
    unknown = sorted(set(values) - {f.name for f in fields(GenerationOptions)})
    if unknown:
        raise BridgeError(f"Unknown decoding option {unknown[0]!r}.", "see docs/protocol.md for the options")
    for name in WHOLE_NUMBERS:
        if name in values:
            values[name] = int(values[name])
    return replace(DEFAULT_DECODING, **values)
