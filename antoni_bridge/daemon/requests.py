"""Checks of job requests, run in the socket loop so a malformed request is refused at once.

Each check returns one sentence saying what is wrong, or None: then the request is answered with
`bad-request` and never becomes a job. Everything that can be decided from the message alone is
decided here (types, ranges, path form, region size, conversation shape); only what needs files or
models (does the slide exist, is the geometry an area, is there tissue, do the latents fit) is
checked by the worker, after `accepted`, and ends the job with `bad-input`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from antoni_bridge.daemon.runtime import MODEL_PARTS

Check = Callable[[dict[str, Any]], str | None]
OPTION_KEYS = {"max_new_tokens", "greedy", "temperature", "top_p", "top_k", "seed"}
MAX_CHOICES = 32
MAX_IMAGE_CHARS = 24 * 2**20  # base64 of an 18 MB picture; the message limit is 32 MiB


def _first(*problems: str | None) -> str | None:
    return next((p for p in problems if p), None)


def _source(content: dict[str, Any], features_allowed: bool = True) -> str | None:
    """A slide (with an optional region) or, where allowed, a features file."""
    names = ("slide", "features") if features_allowed else ("slide",)
    given = [name for name in names if name in content]
    if len(given) != 1:
        return "The request names either a slide or a features file." if features_allowed else "Name a slide."
    if not isinstance(content[given[0]], str) or not content[given[0]]:
        return f"'{given[0]}' must be a path string."
    if content.get("region") is not None and not isinstance(content["region"], dict):
        return "'region' must be a GeoJSON geometry object in level-0 pixels."
    mpp = content.get("slide_mpp")
    if mpp is not None and (isinstance(mpp, bool) or not isinstance(mpp, int | float)):
        return "'slide_mpp' must be a number."
    return None


def _conversation(content: dict[str, Any]) -> str | None:
    conversation = content.get("conversation")
    if not isinstance(conversation, list) or not conversation:
        return "The request carries a non-empty conversation (a list of {role, content} turns)."
    return None


def _options(content: dict[str, Any]) -> str | None:
    options = content.get("options", {})
    if not isinstance(options, dict) or not set(options) <= OPTION_KEYS:
        return f"Generation options must be an object with keys among {sorted(OPTION_KEYS)}."
    numbers = {k: v for k, v in options.items() if k not in ("greedy", "seed")}
    if any(isinstance(v, bool) or not isinstance(v, int | float) for v in numbers.values()):
        return "Generation options max_new_tokens, temperature, top_p and top_k must be numbers."
    counts = [options.get("max_new_tokens", 1), options.get("top_k", 0)]  # JSON has no integers: 6.0 is 6
    if not all(float(v).is_integer() and 0 <= v <= 1_000_000 for v in counts):
        return "Generation options max_new_tokens and top_k must be whole numbers (max_new_tokens at least 1)."
    seed = options.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        return "Generation option seed must be null or a whole number from 0 to 2**63 - 1."
    if not isinstance(options.get("greedy", True), bool) or not isinstance(options.get("seed", 0), int | None):
        return "Generation option greedy must be true or false, and seed an integer or null."
    return None


def check_ask(content: dict[str, Any]) -> str | None:
    return _first(_source(content), _conversation(content), _options(content))


def check_score(content: dict[str, Any]) -> str | None:
    choices = content.get("choices")
    if not isinstance(content.get("question"), str) or not content["question"].strip():
        return "A score request carries a question."
    if not isinstance(choices, list) or not 0 < len(choices) <= MAX_CHOICES:
        return f"A score request carries 1 to {MAX_CHOICES} choices."
    if not all(isinstance(c, str) and c.strip() for c in choices):
        return "Every choice must be a non-empty string."
    return _source(content)


def check_view(content: dict[str, Any]) -> str | None:
    if "image" in content:
        image = content["image"]
        if not isinstance(image, str) or not 0 < len(image) <= MAX_IMAGE_CHARS:
            return f"'image' must be a base64 PNG or JPEG of at most {MAX_IMAGE_CHARS:,} characters."
        if "slide" in content:
            return "A view request sends an image or names a slide, not both."
        problem = None
    else:
        problem = _source(content, features_allowed=False)
    return _first(problem, _conversation(content), _options(content))


def check_embed(content: dict[str, Any]) -> str | None:
    return _source(content, features_allowed=False)


def check_forget(content: dict[str, Any]) -> str | None:
    if ("slide" in content) == bool(content.get("all")):
        return "A forget request names a slide, or says all: true."
    if "slide" in content and not isinstance(content["slide"], str):
        return "'slide' must be a path string."
    return None


def check_models(content: dict[str, Any]) -> str | None:
    models = content.get("models", list(MODEL_PARTS))
    if not isinstance(models, list) or not models or not all(isinstance(m, str) and m in MODEL_PARTS for m in models):
        return f"'models' must be a list with items among {list(MODEL_PARTS)}."
    return None


JOB_CHECKS: dict[str, Check] = {
    "ask": check_ask,
    "score": check_score,
    "view": check_view,
    "embed": check_embed,
    "forget": check_forget,
    "load": check_models,
    "unload": check_models,
}
