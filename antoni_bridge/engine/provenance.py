"""Provenance: what produced an answer, recorded wherever an answer is saved so it can be told apart and
reproduced (which weights, by content; which language model and encoders; demo or not; how it decoded)."""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path
from typing import Any

from antoni_bridge import __version__
from antoni_bridge.engine.choice import ModelChoice
from antoni_bridge.model.options import GenerationOptions

HASH_CHUNK = 8 << 20


def weights_sha256(folder: Path) -> str:
    """The SHA-256 of the weight files' contents, in name order: one value for one set of weights, wherever
    it was downloaded or copied to."""
    from antoni_bridge.encoders.sources import weight_files

    digest = hashlib.sha256()
    for file in weight_files(folder, "ANTONI-Alpha"):
        with file.open("rb") as fh:
            while chunk := fh.read(HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def model_provenance(choice: ModelChoice, sha256: str | None, adapter: bool = True) -> dict[str, Any]:
    """What hello and status report: the models, before any answer."""
    return {
        "antoni_bridge": __version__,
        "weights": str(choice.weights),
        "weights_revision": choice.revision,
        "weights_sha256": sha256,
        "llm": choice.llm,
        "tile_encoder": choice.tile_encoder,
        "slide_encoder": choice.slide_encoder,
        "adapter": adapter,
        "demo": choice.demo,
    }


def answer_provenance(model: dict[str, Any], options: GenerationOptions, stop_reason: str) -> dict[str, Any]:
    """An answer's: the models', the decoding actually used and why the answer ended."""
    return {**model, "decoding": asdict(options), "stop_reason": stop_reason}


def short(provenance: dict[str, Any]) -> str:
    """One line for a log: weights id, revision and the start of the content hash."""
    sha = provenance.get("weights_sha256") or "unhashed"
    return f"weights {provenance['weights']}@{provenance.get('weights_revision') or 'main'} sha256 {sha[:12]}"
