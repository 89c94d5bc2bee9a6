"""What the one GPU worker does for each kind of job: one Engine call, its result as the `done` content.

Runners turn the engine's progress and text callbacks into `progress` and `token` events and hand it
the job's cancel flag; a cancel raises `Cancelled`, bad input a `BridgeError`.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from antoni_bridge.daemon.jobs import Job
from antoni_bridge.engine import MODEL_PARTS, Answer, Engine, options_from, source_from
from antoni_bridge.engine.prism_heads import (
    DEFAULT_GROUPS,
    DEFAULT_REPORT_PROMPT,
    DEFAULT_REPORT_TOKENS,
    PRISM,
    REPORT_LABEL,
)
from antoni_bridge.errors import BridgeError

MAX_IMAGE_PIXELS = 64 * 2**20  # decoded, 192 MB of RGB; a small PNG can claim gigapixels
Emit = Callable[[str, dict[str, Any]], None]
Runner = Callable[[Job, Engine, Emit], dict[str, Any]]


def _callbacks(job: Job, emit: Emit) -> dict[str, Any]:
    """The engine's progress and cancel callbacks for a job; progress is also kept for `status`."""

    def on_progress(p) -> None:  # p: slides.planning.Progress
        job.stage, job.done, job.total = p.stage, p.done, p.total
        emit("progress", {"stage": p.stage, "done": p.done, "total": p.total, "rate": p.rate})

    return {"on_progress": on_progress, "cancelled": job.cancel.is_set}


def _on_text(emit: Emit) -> Callable[[str], None]:
    return lambda text: emit("token", {"text": text})


def _answered(answer: Answer, engine: Engine) -> dict[str, Any]:
    return {
        "answer": answer.text,
        "stop_reason": answer.stop_reason,
        "demo": engine.choice.demo,
        "token_ids": answer.token_ids,
        "timings": {k: v for k, v in answer.timings.items() if k != "prompt_tokens"},
        "provenance": answer.provenance,
    }


def run_ask(job: Job, engine: Engine, emit: Emit) -> dict[str, Any]:
    c = job.content
    answer = engine.ask(
        source_from(c),
        c["conversation"],
        options_from(c.get("options")),
        on_text=_on_text(emit),
        **_callbacks(job, emit),
    )
    return {
        **_answered(answer, engine),
        "cache_hit": answer.cache_hit,
        "latents_from": answer.latents_from,
        "latents_shape": answer.latents_shape,
        "tiles": answer.tiles,
        "region_clipped": answer.region_clipped,
        "reliance": answer.reliance,
    }


def run_explain(job: Job, engine: Engine, emit: Emit) -> dict[str, Any]:
    c = job.content
    explained = engine.explain(
        source_from(c),
        c["conversation"],
        c["answer"],
        method=c.get("method", "occlusion"),
        groups=c.get("groups", 64),
        random_orders=c.get("random_orders", 8),
        **_callbacks(job, emit),
    )
    return asdict(explained)


def run_score(job: Job, engine: Engine, emit: Emit) -> dict[str, Any]:
    c = job.content
    scores = engine.score(source_from(c), c["question"], c["choices"], **_callbacks(job, emit))
    return {
        "choices": scores.choices,
        "mean_nll": scores.mean_nll,  # per choice; lower is more likely
        "best": scores.best,
        "cache_hit": scores.cache_hit,
        "region_clipped": scores.region_clipped,
        "demo": engine.choice.demo,
        "timings": scores.timings,
        "provenance": scores.provenance,
    }


def run_view(job: Job, engine: Engine, emit: Emit) -> dict[str, Any]:
    c = job.content
    image, clipped = _uploaded(c["image"]) if "image" in c else engine.field_of_view(source_from(c))
    answer = engine.view(
        image, c["conversation"], options_from(c.get("options")), on_text=_on_text(emit), **_callbacks(job, emit)
    )
    return {**_answered(answer, engine), "image_size": answer.image_size, "region_clipped": clipped}


def _uploaded(data: str) -> tuple[Any, bool]:  # (np.ndarray, clipped)
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        decoded = base64.b64decode(data, validate=True)
        with Image.open(io.BytesIO(decoded), formats=["PNG", "JPEG"]) as opened:  # no decoder runs other code
            if opened.width * opened.height > MAX_IMAGE_PIXELS:
                raise BridgeError(
                    f"The image is {opened.width} x {opened.height} pixels; the limit is {MAX_IMAGE_PIXELS:,}.",
                    "send a field of view of a few thousand pixels at most: the model sees 896 x 896",
                )
            return np.asarray(opened.convert("RGB")), False
    except (binascii.Error, UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise BridgeError(f"The image cannot be decoded ({exc}).", "send a base64 PNG or JPEG") from exc


def run_zero_shot(job: Job, engine: Engine, emit: Emit) -> dict[str, Any]:
    c = job.content
    groups = c.get("groups", DEFAULT_GROUPS) if c.get("map") else None
    result = engine.zero_shot(
        source_from(c), c.get("labels"), c.get("prompts"), map_groups=groups, **_callbacks(job, emit)
    )
    return {**asdict(result), "model": PRISM}


def run_report(job: Job, engine: Engine, emit: Emit) -> dict[str, Any]:
    c = job.content
    result = engine.report(
        source_from(c),
        c.get("prompt", DEFAULT_REPORT_PROMPT),
        c.get("max_new_tokens", DEFAULT_REPORT_TOKENS),
        c.get("beams", 1),
        on_text=_on_text(emit),
        **_callbacks(job, emit),
    )
    return {**asdict(result), "model": PRISM, "label": REPORT_LABEL}


def run_embed(job: Job, engine: Engine, emit: Emit) -> dict[str, Any]:
    return asdict(engine.embed(source_from(job.content), **_callbacks(job, emit)))


def run_forget(job: Job, engine: Engine, emit: Emit) -> dict[str, Any]:
    return {"removed": engine.forget(job.content.get("slide"))}


def run_load(job: Job, engine: Engine, emit: Emit) -> dict[str, Any]:
    engine.load(job.content.get("models", list(MODEL_PARTS)), _callbacks(job, emit)["on_progress"])
    return {"loaded": engine.loaded()}


def run_unload(job: Job, engine: Engine, emit: Emit) -> dict[str, Any]:
    engine.unload(job.content.get("models", list(MODEL_PARTS)))
    return {"loaded": engine.loaded()}


RUNNERS: dict[str, Runner] = {
    "ask": run_ask,
    "score": run_score,
    "explain": run_explain,
    "view": run_view,
    "embed": run_embed,
    "forget": run_forget,
    "load": run_load,
    "unload": run_unload,
    "zero_shot": run_zero_shot,
    "report": run_report,
}
