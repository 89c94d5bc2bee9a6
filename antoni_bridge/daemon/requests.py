"""Checks of job requests, run in the socket loop so a malformed request is refused at once.

Each check returns one sentence saying what is wrong, or None: then the request is answered with
`bad-request` and never becomes a job. Everything that can be decided from the message alone is
decided here (types, ranges, path form, region size, conversation shape); only what needs files or
models (does the slide exist, is the geometry an area, is there tissue, do the latents fit) is
checked by the worker, after `accepted`, and ends the job with `bad-input`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from typing import Any

from antoni_bridge.engine import MODEL_PARTS
from antoni_bridge.errors import BridgeError
from antoni_bridge.slides.regions import MAX_REGION_VERTICES

Check = Callable[[dict[str, Any]], str | None]
OPTION_KEYS = {"max_new_tokens", "greedy", "temperature", "top_p", "top_k", "seed"}
MAX_CHOICES = 32
MAX_IMAGE_CHARS = 24 * 2**20  # base64 of an 18 MB picture; the message limit is 32 MiB
MAX_NEW_TOKENS = 8192  # far beyond any answer the model was trained to give
MAX_TOP_K = 1_000_000
MAX_PATH_CHARS = 4096  # PATH_MAX on Linux
MAX_TEXT_CHARS = 200_000  # a conversation, question or choices: about 50,000 tokens
SLIDE_MPP_RANGE = (0.01, 100.0)  # what Slide accepts from a file's metadata, too


def _first(*problems: str | None) -> str | None:
    return next((p for p in problems if p), None)


def valid_text(content: dict[str, Any]) -> str | None:
    """Every string must be sendable back as UTF-8: a lone surrogate (legal in JSON's \\u escapes) is not."""
    try:
        json.dumps(content, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return "The request holds text that is not valid Unicode (a lone surrogate such as \\udc80)."
    except RecursionError:
        return "The request is nested too deeply."
    return None


def _path(name: str, value: Any) -> str | None:
    """A path the daemon can look up: absolute (the client's working folder means nothing here)."""
    if not isinstance(value, str) or not value:
        return f"'{name}' must be a path string."
    if len(value) > MAX_PATH_CHARS:
        return f"'{name}' is {len(value):,} characters long; a path has at most {MAX_PATH_CHARS:,}."
    if "\0" in value:
        return f"'{name}' contains a NUL character, which no file path can."
    if not (os.path.isabs(value) or value == "~" or value.startswith("~/")):
        return f"'{name}' must be an absolute path (or start with ~/, the daemon's home), not {value[:200]!r}."
    return None


def _region(region: Any) -> str | None:
    if region is None:
        return None
    if not isinstance(region, dict):
        return "'region' must be a GeoJSON geometry object in level-0 pixels."
    if _positions_exceed(region.get("coordinates"), MAX_REGION_VERTICES):
        return f"'region' has more than {MAX_REGION_VERTICES:,} vertices; simplify the annotation."
    return None


def _positions_exceed(coordinates: Any, limit: int) -> bool:
    """Whether nested coordinate lists hold more than `limit` positions; stops counting once past it."""
    count, stack = 0, [coordinates]
    while stack:
        item = stack.pop()
        if isinstance(item, list) and item and isinstance(item[0], list):
            stack.extend(item)
        elif isinstance(item, list):
            count += 1
            if count > limit:
                return True
    return False


def _slide_mpp(mpp: Any) -> str | None:
    low, high = SLIDE_MPP_RANGE
    if mpp is None:
        return None
    if isinstance(mpp, bool) or not isinstance(mpp, int | float) or not math.isfinite(mpp) or not low <= mpp <= high:
        return f"'slide_mpp' must be a number of microns per pixel from {low} to {high:g} (0.25 for a 40x scan)."
    return None


def _source(content: dict[str, Any], features_allowed: bool = True) -> str | None:
    """A slide (with an optional region) or, where allowed, a features file."""
    names = ("slide", "features") if features_allowed else ("slide",)
    given = [name for name in names if name in content]
    if len(given) != 1:
        return "The request names either a slide or a features file." if features_allowed else "Name a slide."
    return _first(
        _path(given[0], content[given[0]]), _region(content.get("region")), _slide_mpp(content.get("slide_mpp"))
    )


def _conversation(content: dict[str, Any]) -> str | None:
    """The whole conversation check the model makes, here: a bad one is refused before any slide is read."""
    from antoni_bridge.model.prompt import check_asks

    conversation = content.get("conversation")
    if not isinstance(conversation, list) or not conversation:
        return "The request carries a non-empty conversation (a list of {role, content} turns)."
    try:
        check_asks(conversation)
    except BridgeError as exc:
        return f"{exc.message} ({exc.hint})."
    if sum(len(turn["content"]) for turn in conversation) > MAX_TEXT_CHARS:
        return f"The conversation has more than {MAX_TEXT_CHARS:,} characters; start a new one."
    return None


def _options(content: dict[str, Any]) -> str | None:
    options = content.get("options", {})
    if not isinstance(options, dict) or not set(options) <= OPTION_KEYS:
        return f"Generation options must be an object with keys among {sorted(OPTION_KEYS)}."
    numbers = {k: v for k, v in options.items() if k not in ("greedy", "seed")}
    if any(isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) for v in numbers.values()):
        return "Generation options max_new_tokens, temperature, top_p and top_k must be finite numbers."
    tokens, top_k = options.get("max_new_tokens", 1), options.get("top_k", 0)  # JSON has no integers: 6.0 is 6
    if not (float(tokens).is_integer() and 1 <= tokens <= MAX_NEW_TOKENS):
        return f"Generation option max_new_tokens must be a whole number from 1 to {MAX_NEW_TOKENS}."
    if not (float(top_k).is_integer() and 0 <= top_k <= MAX_TOP_K):
        return f"Generation option top_k must be a whole number from 0 (off) to {MAX_TOP_K:,}."
    if not options.get("temperature", 1.0) > 0 or not 0 < options.get("top_p", 1.0) <= 1:
        return "Generation options need temperature > 0 and 0 < top_p <= 1."
    seed = options.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        return "Generation option seed must be null or a whole number from 0 to 2**63 - 1."
    if not isinstance(options.get("greedy", True), bool):
        return "Generation option greedy must be true or false."
    return None


def check_ask(content: dict[str, Any]) -> str | None:
    return _first(_source(content), _conversation(content), _options(content))


def check_score(content: dict[str, Any]) -> str | None:
    choices, question = content.get("choices"), content.get("question")
    if not isinstance(question, str) or not question.strip():
        return "A score request carries a question."
    if not isinstance(choices, list) or not 0 < len(choices) <= MAX_CHOICES:
        return f"A score request carries 1 to {MAX_CHOICES} choices."
    if not all(isinstance(c, str) and c.strip() for c in choices):
        return "Every choice must be a non-empty string."
    if len(question) + sum(map(len, choices)) > MAX_TEXT_CHARS:
        return f"The question and choices have more than {MAX_TEXT_CHARS:,} characters."
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
    if ("slide" in content) == (content.get("all") is True):
        return "A forget request names a slide, or says all: true."
    return _path("slide", content["slide"]) if "slide" in content else None


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


def check_job(type_: str, content: dict[str, Any]) -> str | None:
    """The first problem of a job request, or None: text first, as every reply echoes some of it."""
    return valid_text(content) or JOB_CHECKS[type_](content)
