"""What the one GPU worker does for each kind of job; each runner returns the content of its `done`.

Runners report through `emit` (progress and token events) and look at the job's cancel flag between
tile batches and between tokens; a cancel raises `Cancelled`, bad input a `BridgeError`.
"""

from __future__ import annotations

import base64
import binascii
import io
import time
from collections.abc import Callable
from typing import Any

from antoni_bridge.daemon.jobs import Cancelled, Job
from antoni_bridge.daemon.runtime import MODEL_PARTS, Latents, Runtime
from antoni_bridge.errors import BridgeError
from antoni_bridge.slides.planning import Progress

MAX_IMAGE_PIXELS = 64 * 2**20  # decoded, 192 MB of RGB; a small PNG can claim gigapixels
Emit = Callable[[str, dict[str, Any]], None]
Runner = Callable[[Job, Runtime, Emit], dict[str, Any]]


def progress(job: Job, emit: Emit, stage: str, done: int, total: int, rate: float = 0.0) -> None:
    job.stage, job.done, job.total = stage, done, total
    emit("progress", {"stage": stage, "done": done, "total": total, "rate": rate})


def _latents(job: Job, runtime: Runtime, emit: Emit) -> Latents:
    def report(p: Progress) -> None:  # also where a cancel is seen between tile batches
        job.check()
        progress(job, emit, p.stage, p.done, p.total, p.rate)

    latents = runtime.latents_for(job.content, report)
    job.check()
    return latents


def _load(job: Job, runtime: Runtime, emit: Emit, parts: list[str]) -> None:
    """Load what the job needs and is not loaded yet, first, so the user sees why the start takes long."""
    missing = [part for part in parts if getattr(runtime, part) is None]
    if missing:
        progress(job, emit, "loading", 0, 1)  # one step: loading reports no finer progress
        runtime.load(missing)
        progress(job, emit, "loading", 1, 1)


def _needs(content: dict[str, Any], model: bool = True) -> list[str]:
    return (["encoders"] if "slide" in content else []) + (["model"] if model else [])


def _options(content: dict[str, Any]):  # -> GenerationOptions
    from antoni_bridge.model.generation import GenerationOptions

    options = dict(content.get("options", {}))
    for name in ("max_new_tokens", "top_k", "seed"):  # whole numbers, perhaps sent as 6.0 by a Java client
        if options.get(name) is not None:
            options[name] = int(options[name])
    return GenerationOptions(**options)


def _generated(job: Job, runtime: Runtime, result, start: float) -> dict[str, Any]:  # result: Generated
    if result.stop_reason == "cancelled":
        raise Cancelled
    return {
        "answer": result.text,
        "stop_reason": result.stop_reason,
        "demo": runtime.sources.demo,
        "token_ids": result.token_ids,
        "timings": {
            "first_token_s": result.first_token_s,
            "generation_s": result.total_s,
            "tokens_per_s": result.tokens_per_s,
            "total_s": time.perf_counter() - start,
            "reused_tokens": result.reused_tokens,
        },
    }


def run_ask(job: Job, runtime: Runtime, emit: Emit) -> dict[str, Any]:
    start = time.perf_counter()
    _load(job, runtime, emit, _needs(job.content))
    latents = _latents(job, runtime, emit)
    progress(job, emit, "generating", 0, 1)
    result = runtime.model.answer(
        latents.values,
        job.content["conversation"],
        _options(job.content),
        on_text=lambda text: emit("token", {"text": text}),
        cancelled=job.cancel.is_set,
        prefix_key=latents.key,
    )
    return {
        **_generated(job, runtime, result, start),
        "cache_hit": latents.source != "computed",
        "latents_from": latents.source,
        "latents_shape": list(latents.values.shape),
        "tiles": latents.tiles,
        "region_clipped": latents.clipped,
    }


def run_score(job: Job, runtime: Runtime, emit: Emit) -> dict[str, Any]:
    start = time.perf_counter()
    _load(job, runtime, emit, _needs(job.content))
    latents = _latents(job, runtime, emit)
    progress(job, emit, "scoring", 0, 1)
    scores = runtime.model.score_choices(latents.values, job.content["question"], job.content["choices"])
    job.check()
    return {
        "choices": scores.choices,
        "mean_nll": scores.mean_nll,  # per choice; lower is more likely
        "best": scores.best,
        "cache_hit": latents.source != "computed",
        "region_clipped": latents.clipped,
        "demo": runtime.sources.demo,
        "timings": {"total_s": time.perf_counter() - start},
    }


def run_view(job: Job, runtime: Runtime, emit: Emit) -> dict[str, Any]:
    start = time.perf_counter()
    image, clipped = _field_of_view(job.content, runtime)
    _load(job, runtime, emit, ["model"])
    progress(job, emit, "generating", 0, 1)
    result = runtime.model.view(
        image,
        job.content["conversation"],
        _options(job.content),
        on_text=lambda text: emit("token", {"text": text}),
        cancelled=job.cancel.is_set,
    )
    return {**_generated(job, runtime, result, start), "image_size": list(image.shape[:2]), "region_clipped": clipped}


def _field_of_view(content: dict[str, Any], runtime: Runtime) -> tuple[Any, bool]:  # (np.ndarray, clipped)
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    if "image" in content:
        try:
            data = base64.b64decode(content["image"], validate=True)
            with Image.open(io.BytesIO(data), formats=["PNG", "JPEG"]) as opened:  # no decoder runs other code
                if opened.width * opened.height > MAX_IMAGE_PIXELS:
                    raise BridgeError(
                        f"The image is {opened.width} x {opened.height} pixels; the limit is {MAX_IMAGE_PIXELS:,}.",
                        "send a field of view of a few thousand pixels at most: the model sees 896 x 896",
                    )
                return np.asarray(opened.convert("RGB")), False
        except (binascii.Error, UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
            raise BridgeError(f"The image cannot be decoded ({exc}).", "send a base64 PNG or JPEG") from exc
    from antoni_bridge.slides.field_of_view import read_field_of_view
    from antoni_bridge.slides.reader import Slide
    from antoni_bridge.slides.regions import clip_to_slide

    request = runtime.slide_request(content)
    with Slide(request.path, request.slide_mpp) as slide:
        region = clip_to_slide(request.region, *slide.dimensions) if request.region else None
        return read_field_of_view(slide, region), region is not request.region


def run_embed(job: Job, runtime: Runtime, emit: Emit) -> dict[str, Any]:
    start = time.perf_counter()
    _load(job, runtime, emit, ["encoders"])
    latents = _latents(job, runtime, emit)
    return {
        "tiles": latents.tiles,
        "latents_shape": list(latents.values.shape),
        "cache_hit": latents.source != "computed",
        "latents_from": latents.source,
        "region_clipped": latents.clipped,
        "timings": {"total_s": time.perf_counter() - start},
    }


def run_forget(job: Job, runtime: Runtime, emit: Emit) -> dict[str, Any]:
    return {"removed": runtime.forget(job.content.get("slide"))}


def run_load(job: Job, runtime: Runtime, emit: Emit) -> dict[str, Any]:
    _load(job, runtime, emit, job.content.get("models", list(MODEL_PARTS)))
    return {"loaded": runtime.loaded()}


def run_unload(job: Job, runtime: Runtime, emit: Emit) -> dict[str, Any]:
    runtime.unload(job.content.get("models", list(MODEL_PARTS)))
    return {"loaded": runtime.loaded()}


RUNNERS: dict[str, Runner] = {
    "ask": run_ask,
    "score": run_score,
    "view": run_view,
    "embed": run_embed,
    "forget": run_forget,
    "load": run_load,
    "unload": run_unload,
}
