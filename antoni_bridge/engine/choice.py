"""Which models answer: the one description every front end builds from its options (or the demo set)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelChoice:
    """The encoders, ANTONI-Alpha weights and language model, and where they run."""

    tile_encoder: str
    slide_encoder: str
    weights: Path | str  # a folder, or a hub id resolved (with `revision`) when the model loads
    revision: str | None = None
    llm: str | None = None  # None: as the weights' config says
    device: str = "cpu"
    quant: str = "auto"  # auto, 4bit, bf16 or none (fp32)
    demo: bool = False
