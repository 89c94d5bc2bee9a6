"""Checks of job requests, run in the socket loop so a malformed request is refused at once.

The rules live in the request models of `messages` (the protocol's schema); this module runs them. Each
check returns one sentence saying what is wrong, or None: then the request is answered with `bad-request`
and never becomes a job. Everything that can be decided from the message alone is decided there (types,
ranges, path form, region size, conversation shape); only what needs files or models (does the slide
exist, is the geometry an area, is there tissue, do the latents fit) is checked by the worker, after
`accepted`, and ends the job with `bad-input`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from typing import Any

from antoni_bridge.daemon.messages import JOBS, REQUESTS, refusal

Check = Callable[[dict[str, Any]], str | None]


def valid_text(content: dict[str, Any]) -> str | None:
    """Every string must be sendable back as UTF-8: a lone surrogate (legal in JSON's \\u escapes) is not."""
    try:
        json.dumps(content, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return "The request holds text that is not valid Unicode (a lone surrogate such as \\udc80)."
    except RecursionError:
        return "The request is nested too deeply."
    return None


JOB_CHECKS: dict[str, Check] = {kind: partial(refusal, REQUESTS[kind]) for kind in JOBS}


def check_job(type_: str, content: dict[str, Any]) -> str | None:
    """The first problem of a job request, or None: text first, as every reply echoes some of it."""
    return valid_text(content) or JOB_CHECKS[type_](content)
