"""Every request, event and reply of protocol v1 as a pydantic model: the one schema in code.

docs/protocol.schema.json is generated from these models (`python -m antoni_bridge.daemon.messages
--write docs/protocol.schema.json`) and a test keeps it equal to them; docs/protocol.md's field tables are
checked against it. Requests carry the daemon's bad-request rules: each failure is one sentence naming the
field (`refusal` reads it out of a ValidationError). Replies are strict (no unknown fields), so a daemon
reply that drifts from the schema fails `check_reply`, which the Python client runs in tests.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    WrapValidator,
    model_validator,
)
from pydantic.json_schema import models_json_schema
from pydantic_core import PydanticCustomError

from antoni_bridge.engine import MODEL_PARTS
from antoni_bridge.engine.prism_heads import MAX_BEAMS, MAX_LABELS, MAX_PHRASINGS, MAX_REPORT_TOKENS, MIN_LABELS
from antoni_bridge.errors import BridgeError
from antoni_bridge.platforms import is_absolute
from antoni_bridge.slides.regions import MAX_REGION_VERTICES

VERSION = 1
MAX_CHOICES = 32
MAX_IMAGE_CHARS = 24 * 2**20  # base64 of an 18 MB picture; the message limit is 32 MiB
MAX_NEW_TOKENS = 8192  # far beyond any answer the model was trained to give
MAX_TOP_K = 1_000_000
MAX_SIMILAR = 1000  # similar slides in one reply
MAX_PATH_CHARS = 4096  # PATH_MAX on Linux
MAX_TEXT_CHARS = 200_000  # a conversation, question or choices: about 50,000 tokens
GROUPS_RANGE = (2, 1024)  # tile groups of an evidence map
MAX_RANDOM_ORDERS = 64  # random deletion orders of a map's faithfulness figure
SLIDE_MPP_RANGE = (0.01, 100.0)  # what Slide accepts from a file's metadata, too
REFUSED = "bad_request"  # the pydantic error type whose message is the sentence a client reads

ModelPart = Literal["encoders", "model"]
JobKind = Literal[
    "ask", "score", "view", "embed", "forget", "load", "unload", "explain", "zero_shot", "report", "similar"
]
ProgressStage = Literal[
    "loading",
    "reading",
    "tissue",
    "tiling",
    "tile-embedding",
    "slide-encoding",
    "generating",
    "scoring",
    "grouping",
    "occlusion",
    "refining",
    "faithfulness",
]
ErrorCode = Literal[
    "bad-frames",
    "too-large",
    "bad-signature",
    "replayed",
    "invalid-json",
    "bad-message",
    "bad-version",
    "stale",
    "too-many",
    "unknown-type",
    "bad-request",
    "unknown-job",
    "bad-input",
    "out-of-memory",
    "internal",
]


def refused(sentence: str) -> PydanticCustomError:
    """The error whose message is the whole sentence a `bad-request` carries."""
    return PydanticCustomError(REFUSED, sentence)


def says(sentence: str) -> WrapValidator:
    """Any failure of a field becomes this one sentence, unless an inner check gave a sentence of its own."""

    def validate(value: Any, handler: Callable[[Any], Any]) -> Any:
        try:
            return handler(value)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise refused(first["msg"] if first["type"] == REFUSED else sentence) from None

    validate.sentence = sentence  # read by `refusal` for a missing field
    return WrapValidator(validate)


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def optional(description: str) -> Any:
    """A field that may be left out (but not sent as null): no default appears in the schema."""
    return Field(None, description=description, json_schema_extra=_no_default)


class Strict(BaseModel):
    """Requests: JSON types only (no "6" for 6), fields not named here are ignored."""

    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class Reply(BaseModel):
    """What the daemon sends: exactly these fields, so drift from the schema is caught."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


# ------------------------------------------------------------------------------ header


class Header(Reply):
    """Frame 3 of every message."""

    msg_id: str = Field(description="unique per message (a UUID)")
    type: str = Field(description="the request or reply type")
    session: str = Field(description="the sender's session id, constant for one client run")
    date: float = Field(description="seconds since the Unix epoch (UTC) when sent; within 300 s of the receiver's")
    version: Literal[1] = Field(description="the protocol version, 1")
    parent_id: str = optional("in replies and events: the msg_id of the request they answer")


# ------------------------------------------------------------------------------ request rules


def _path(value: str, info: Any) -> str:
    """A path the daemon can look up: absolute (the client's working folder means nothing there)."""
    name = info.field_name
    if len(value) > MAX_PATH_CHARS:
        raise refused(f"'{name}' is {len(value):,} characters long; a path has at most {MAX_PATH_CHARS:,}.")
    if "\0" in value:
        raise refused(f"'{name}' contains a NUL character, which no file path can.")
    if not (is_absolute(value) or value == "~" or value.startswith("~/")):
        raise refused(
            f"'{name}' must be an absolute path (or start with ~/, the daemon's home), not {value[:200]!r}"
            f"{_other_system(value)}."
        )
    return value


def _other_system(value: str) -> str:
    """What to add when a path is absolute only on the other kind of system (C:\\ sent to Linux, / to Windows)."""
    if PureWindowsPath(value).is_absolute() or PurePosixPath(value).is_absolute():
        return " (a path of another system: the daemon reads paths on its own machine)"
    return ""


def _path_field(name: str) -> Any:
    return Annotated[str, Field(min_length=1), AfterValidator(_path), says(f"'{name}' must be a path string.")]


SlidePath = _path_field("slide")
FeaturesPath = _path_field("features")
WithinPath = _path_field("within")


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


def _region(region: dict[str, Any]) -> dict[str, Any]:
    if _positions_exceed(region.get("coordinates"), MAX_REGION_VERTICES):
        raise refused(f"'region' has more than {MAX_REGION_VERTICES:,} vertices; simplify the annotation.")
    return region


def _finite(value: float) -> float:
    if not math.isfinite(value):  # an integer past a double's range
        raise ValueError("not finite")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("blank")
    return value


Region = Annotated[
    dict[str, Any],
    AfterValidator(_region),
    says("'region' must be a GeoJSON geometry object in level-0 pixels."),
    Field(
        description="a GeoJSON Polygon or MultiPolygon in level-0 pixels, holes allowed, at most "
        f"{MAX_REGION_VERTICES:,} vertices; clipped to the slide (done says region_clipped)",
    ),
]
SlideMpp = Annotated[
    float,
    Field(ge=SLIDE_MPP_RANGE[0], le=SLIDE_MPP_RANGE[1]),
    AfterValidator(_finite),
    says("'slide_mpp' must be a number of microns per pixel from 0.01 to 100 (0.25 for a 40x scan)."),
]
WholeTokens = Annotated[
    float,
    Field(ge=1, le=MAX_NEW_TOKENS, multiple_of=1),
    says(f"Generation option max_new_tokens must be a whole number from 1 to {MAX_NEW_TOKENS}."),
]
TopK = Annotated[
    float,
    Field(ge=0, le=MAX_TOP_K, multiple_of=1),
    says(f"Generation option top_k must be a whole number from 0 (off) to {MAX_TOP_K:,}."),
]
Temperature = Annotated[float, Field(gt=0), AfterValidator(_finite), says("Generation option temperature must be > 0.")]
TopP = Annotated[float, Field(gt=0, le=1), says("Generation option top_p must be a number with 0 < top_p <= 1.")]
Seed = Annotated[
    Annotated[int, Field(ge=0, lt=2**63)] | None,
    says("Generation option seed must be null or a whole number from 0 to 2**63 - 1."),
]
Greedy = Annotated[bool, says("Generation option greedy must be true or false.")]


class Options(Strict):
    """Generation options; each one left out takes the daemon's default (its `hello` names them)."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: WholeTokens = optional(f"the answer's length limit in tokens, 1 to {MAX_NEW_TOKENS}; 6.0 is 6")
    greedy: Greedy = optional("decode greedily (true) or sample (false)")
    temperature: Temperature = optional("sampling temperature, > 0")
    top_p: TopP = optional("nucleus sampling, 0 < top_p <= 1")
    top_k: TopK = optional(f"sample from the k likeliest tokens, 0 (off) to {MAX_TOP_K:,}; 6.0 is 6")
    seed: Seed = optional("null or a whole number from 0 to 2**63 - 1: the same seed, the same sample")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, value: Any) -> Any:
        if not isinstance(value, dict) or not set(value) <= set(cls.model_fields):
            raise refused(f"Generation options must be an object with keys among {sorted(cls.model_fields)}.")
        return value


class Turn(BaseModel):
    """One turn of an OpenAI-style conversation."""

    model_config = ConfigDict(strict=True, extra="ignore")
    role: Literal["user", "assistant"] = Field(description="user, assistant, user, ...: starting with the user")
    content: str = Field(description="the turn's text")


def _conversation(conversation: Any) -> Any:
    """The whole conversation check the model makes, here: a bad one is refused before any slide is read."""
    from antoni_bridge.model.prompt import check_asks

    if not isinstance(conversation, list) or not conversation:
        raise refused(_conversation_rule.sentence)
    try:
        check_asks(conversation)
    except BridgeError as exc:
        raise refused(f"{exc.message} ({exc.hint}).") from None
    if sum(len(turn["content"]) for turn in conversation) > MAX_TEXT_CHARS:
        raise refused(f"The conversation has more than {MAX_TEXT_CHARS:,} characters; start a new one.")
    return conversation


def _conversation_rule(value: Any, handler: Callable[[Any], Any]) -> Any:
    return handler(_conversation(value))


_conversation_rule.sentence = "The request carries a non-empty conversation (a list of {role, content} turns)."
Conversation = Annotated[
    list[Turn],
    WrapValidator(_conversation_rule),
    Field(description=f"alternating turns ending with the question, at most {MAX_TEXT_CHARS:,} characters in all"),
]
OptionsField = Annotated[Options, says("Generation options must be an object.")]


def _one_source(content: Any, names: tuple[str, ...], sentence: str) -> Any:
    if not isinstance(content, dict) or sum(name in content for name in names) != 1:
        raise refused(sentence)
    return content


# ------------------------------------------------------------------------------ requests


class Empty(Strict):
    """No content: `{}`."""


class CancelRequest(Strict):
    job_id: str = Field(description="the `job_id` of an `accepted` reply")


class SlideSource(Strict):
    """Latents named by a slide (with an optional region) or a features file."""

    slide: SlidePath = optional(f"an absolute path on the daemon's machine (or ~/...), at most {MAX_PATH_CHARS}")
    features: FeaturesPath = optional("an absolute path of a features file (our HDF5, or .pt/.h5 latents [513, D])")
    region: Region | None = None
    slide_mpp: SlideMpp | None = Field(None, description="microns per pixel, 0.01 to 100; overrides the file's value")

    @model_validator(mode="before")
    @classmethod
    def _source(cls, content: Any) -> Any:
        return _one_source(content, ("slide", "features"), "The request names either a slide or a features file.")


class AskRequest(SlideSource):
    conversation: Conversation
    options: OptionsField = optional("generation options; those left out take the daemon's defaults")


class ScoreRequest(SlideSource):
    question: Annotated[str, AfterValidator(_not_blank), says("A score request carries a question.")] = Field(
        description="the question the choices answer"
    )
    choices: Annotated[
        list[Annotated[str, AfterValidator(_not_blank)]],
        Field(min_length=1, max_length=MAX_CHOICES),
        says(f"A score request carries 1 to {MAX_CHOICES} non-empty choices."),
    ] = Field(description=f"1 to {MAX_CHOICES} answers to rank; with the question at most {MAX_TEXT_CHARS:,} chars")

    @model_validator(mode="after")
    def _length(self) -> ScoreRequest:
        if len(self.question) + sum(map(len, self.choices)) > MAX_TEXT_CHARS:
            raise refused(f"The question and choices have more than {MAX_TEXT_CHARS:,} characters.")
        return self


class ExplainRequest(SlideSource):
    conversation: Conversation
    answer: Annotated[
        str,
        AfterValidator(_not_blank),
        Field(max_length=MAX_TEXT_CHARS),
        says(f"An explain request carries the answer to explain (non-blank text of at most {MAX_TEXT_CHARS:,} chars)."),
    ] = Field(description="the answer to explain, the reply to the conversation; its tokens are fixed by its text")
    method: Annotated[
        Literal["occlusion", "attention"],
        says('\'method\' must be "occlusion" or "attention" (the cheap preview).'),
    ] = optional('"occlusion" (default): left-out tile groups, rescored; "attention": the cheap, unfaithful preview')
    groups: Annotated[
        int,
        Field(ge=GROUPS_RANGE[0], le=GROUPS_RANGE[1]),
        says(f"'groups' must be a whole number from {GROUPS_RANGE[0]} to {GROUPS_RANGE[1]}."),
    ] = optional(f"how many compact tile groups the map has, {GROUPS_RANGE[0]} to {GROUPS_RANGE[1]} (default 64)")
    random_orders: Annotated[
        int,
        Field(ge=0, le=MAX_RANDOM_ORDERS),
        says(f"'random_orders' must be a whole number from 0 to {MAX_RANDOM_ORDERS}."),
    ] = optional(f"random deletion orders the map is checked against, 0 to {MAX_RANDOM_ORDERS} (default 8)")


class ViewRequest(Strict):
    slide: SlidePath = optional("an absolute path on the daemon's machine: the field of view is read from it")
    image: Annotated[
        str,
        Field(min_length=1, max_length=MAX_IMAGE_CHARS),
        says(f"'image' must be a base64 PNG or JPEG of at most {MAX_IMAGE_CHARS:,} characters."),
    ] = optional("a base64 PNG or JPEG: the field of view itself")
    region: Region | None = None
    slide_mpp: SlideMpp | None = Field(None, description="microns per pixel, 0.01 to 100")
    conversation: Conversation
    options: OptionsField = optional("generation options; those left out take the daemon's defaults")

    @model_validator(mode="before")
    @classmethod
    def _source(cls, content: Any) -> Any:
        if isinstance(content, dict) and "image" in content and "slide" in content:
            raise refused("A view request sends an image or names a slide, not both.")
        return _one_source(content, ("slide", "image"), "Name a slide, or send an image.")


class EmbedRequest(Strict):
    slide: SlidePath = Field(description="an absolute path on the daemon's machine")
    region: Region | None = None
    slide_mpp: SlideMpp | None = Field(None, description="microns per pixel, 0.01 to 100")

    @model_validator(mode="before")
    @classmethod
    def _source(cls, content: Any) -> Any:
        return _one_source(content, ("slide",), "Name a slide.")


class SimilarRequest(SlideSource):
    top: Annotated[
        int, Field(ge=1, le=MAX_SIMILAR), says(f"'top' must be a whole number from 1 to {MAX_SIMILAR:,}.")
    ] = optional(f"how many slides or regions to return, 1 to {MAX_SIMILAR:,}; 10 when left out")
    within: WithinPath = optional("an absolute folder (results under it) or a QuPath project file (.qpproj)")


class ForgetRequest(Strict):
    slide: SlidePath = optional("the slide whose cached latents (every region) are dropped")
    all: Literal[True] = optional("true: drop the cached latents of every slide")

    @model_validator(mode="before")
    @classmethod
    def _one(cls, content: Any) -> Any:
        if not isinstance(content, dict) or ("slide" in content) == (content.get("all") is True):
            raise refused("A forget request names a slide, or says all: true.")
        return content


Phrasings = Annotated[list[Annotated[str, AfterValidator(_not_blank)]], Field(min_length=1, max_length=MAX_PHRASINGS)]


class ZeroShotRequest(SlideSource):
    labels: Annotated[
        list[Annotated[str, AfterValidator(_not_blank)]],
        Field(min_length=MIN_LABELS, max_length=MAX_LABELS),
        says(f"'labels' must be a list of {MIN_LABELS} to {MAX_LABELS} non-empty labels."),
    ] = optional(f"{MIN_LABELS} to {MAX_LABELS} labels, each its own prompt")
    prompts: Annotated[
        dict[str, Phrasings],
        Field(min_length=MIN_LABELS, max_length=MAX_LABELS),
        says(f"'prompts' must map {MIN_LABELS} to {MAX_LABELS} labels to 1 to {MAX_PHRASINGS} non-empty phrasings."),
    ] = optional("{label: [phrasing, ...]}: a label's phrasings are pooled, as Prism's zero_shot pools prompts")
    map: Annotated[bool, says("'map' must be true or false.")] = optional(
        "true: also the probabilities per tile group (default false)"
    )
    groups: Annotated[int, Field(ge=2, le=1024), says("'groups' must be a whole number from 2 to 1024.")] = optional(
        "how many tile groups the map has, 2 to 1024 (default 64)"
    )

    @model_validator(mode="before")
    @classmethod
    def _labels(cls, content: Any) -> Any:
        if not isinstance(content, dict) or ("labels" in content) == ("prompts" in content):
            raise refused("A zero_shot request carries either 'labels' or 'prompts'.")
        return content

    @model_validator(mode="after")
    def _different(self) -> ZeroShotRequest:
        names = [name.strip() for name in (self.labels or list(self.prompts or {}))]
        if len(set(names)) != len(names) or not all(names):
            raise refused("The zero_shot labels must be different and non-empty.")
        phrasings = self.labels or [p for values in (self.prompts or {}).values() for p in values]
        if sum(map(len, phrasings)) + sum(map(len, names)) > MAX_TEXT_CHARS:
            raise refused(f"The labels and prompts have more than {MAX_TEXT_CHARS:,} characters.")
        return self


class ReportRequest(SlideSource):
    prompt: Annotated[
        str,
        Field(max_length=1000),
        AfterValidator(_not_blank),
        says("'prompt' must be non-empty text of at most 1,000 characters."),
    ] = optional('where the draft starts (default "Diagnosis:", as Prism was trained)')
    max_new_tokens: Annotated[
        int,
        Field(ge=1, le=MAX_REPORT_TOKENS),
        says(f"'max_new_tokens' must be a whole number from 1 to {MAX_REPORT_TOKENS}."),
    ] = optional(f"the draft's length limit in tokens, 1 to {MAX_REPORT_TOKENS} (default 100)")
    beams: Annotated[int, Field(ge=1, le=MAX_BEAMS), says(f"'beams' must be a whole number from 1 to {MAX_BEAMS}.")] = (
        optional(f"beam search width: 1 (greedy, the default) to {MAX_BEAMS}")
    )


class ModelsRequest(Strict):
    models: Annotated[
        list[ModelPart],
        Field(min_length=1),
        says(f"'models' must be a list with items among {list(MODEL_PARTS)}."),
    ] = optional(f"among {list(MODEL_PARTS)}; both when left out")


REQUESTS: dict[str, type[BaseModel]] = {
    "hello": Empty,
    "status": Empty,
    "cancel": CancelRequest,
    "heartbeat": Empty,
    "shutdown": Empty,
    "ask": AskRequest,
    "score": ScoreRequest,
    "explain": ExplainRequest,
    "view": ViewRequest,
    "embed": EmbedRequest,
    "forget": ForgetRequest,
    "load": ModelsRequest,
    "unload": ModelsRequest,
    "zero_shot": ZeroShotRequest,
    "report": ReportRequest,
    "similar": SimilarRequest,
}
JOBS = tuple(JobKind.__args__)


def refusal(model: type[BaseModel], content: dict[str, Any]) -> str | None:
    """The one sentence saying what is wrong with a request's content, or None."""
    try:
        model.model_validate(content)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == REFUSED:
            return first["msg"]
        return _field_sentence(model, str(first["loc"][0]))
    return None


def _field_sentence(model: type[BaseModel], name: str) -> str:
    """A required field left out: the sentence of its own rule (or one naming it)."""
    field = model.model_fields.get(name)
    rules = [m for m in field.metadata if isinstance(m, WrapValidator)] if field else []
    sentences = [getattr(rule.func, "sentence", None) for rule in rules]
    return next((s for s in sentences if s), f"The request's {name!r} is missing or of the wrong type.")


# ------------------------------------------------------------------------------ replies and events


class Decoding(Reply):
    """Generation options as used: the daemon's defaults with the client's overrides."""

    max_new_tokens: int
    greedy: bool
    temperature: float
    top_p: float
    top_k: int
    seed: int | None


class Provenance(Reply):
    """Which code, weights and settings gave an answer (issue 14)."""

    antoni_bridge: str = Field(description="antoni-bridge's version")
    weights: str = Field(description="the ANTONI weights' id or path")
    weights_revision: str | None = Field(description="the weights' revision, when known")
    weights_sha256: str | None = Field(description="content hash of the weights file(s), computed once at load")
    llm: str | None = Field(description="the language model's id, or null")
    tile_encoder: str
    slide_encoder: str
    adapter: bool = Field(description="whether the ANTONI adapter was on")
    demo: bool = Field(description="true for the random demo weights")
    decoding: Decoding = optional("the options actually used (answers only)")
    stop_reason: str = optional("why generation stopped (answers only)")


class HelloReply(Reply):
    protocol: Literal[1] = Field(description="the protocol version")
    server: str = Field(description="name and version, e.g. antoni-bridge 0.1.0")
    demo: bool = Field(description="true when the weights are the random demo weights: say so next to every answer")
    weights: str = Field(description="the name of the ANTONI weights' file or folder")
    llm: str | None = Field(description="the language model named at start, or null")
    capabilities: list[str] = Field(description="the request types the daemon answers")
    loaded: list[ModelPart] = Field(description="models in memory; none at start, loaded by the first job")
    heartbeat_s: float = Field(description="how often a waiting client sends heartbeat: 0.25")
    client_dead_s: float = Field(description="the silence after which a client's jobs are cancelled")
    decoding: Decoding = optional("the default generation options, used where a client sets none")
    provenance: Provenance = optional("the loaded model's provenance, without decoding and stop_reason")


class JobSummary(Reply):
    job_id: str
    kind: JobKind
    stage: Literal["queued"] | ProgressStage = Field(description="queued until the worker takes it")
    done: int
    total: int


class WaitingJob(JobSummary):
    position: int = Field(description="1 for the next to run")


class JobEnd(Reply):
    job_id: str
    end: Literal["done", "cancelled", "error"]
    seconds: float = Field(description="since it was accepted")


class Queue(Reply):
    running: JobSummary | None
    waiting: list[WaitingJob]
    capacity: int = Field(description="how many jobs may wait; the running one is not counted")
    recent: list[JobEnd] = Field(description="the last 20 ends, jobs cancelled while waiting included")


class GpuMemory(Reply):
    allocated_mib: float
    reserved_mib: float
    peak_mib: float
    free_mib: float
    total_mib: float


class CacheUsage(Reply):
    """As of the last finished job; empty until the worker first looked."""

    memory_entries: int = optional("slides or regions whose latents are in memory")
    disk_entries: int = optional("entries of the feature cache on disk")
    disk_bytes: int = optional("the feature cache's size on disk")


class StatusReply(Reply):
    queue: Queue
    gpu: GpuMemory | None = Field(description="null without a GPU")
    loaded: list[ModelPart]
    cache: CacheUsage
    device: str = optional("where the models run: cpu, cuda, cuda:1, mps")
    provenance: Provenance = optional("the loaded model's provenance, without decoding and stop_reason")


class JobIdReply(Reply):
    job_id: str


class EmptyReply(Reply):
    """No content: `{}`."""


class AcceptedReply(Reply):
    job_id: str = Field(description="names the job in cancel and status")
    position: int = Field(description="how many jobs run before this one, the running one included (0: none)")


class BusyReply(Reply):
    message: str
    capacity: int = Field(description="how many jobs may wait (16 by default)")


class ErrorReply(Reply):
    job_id: str = optional("the job's id, when the error ends a job")
    code: ErrorCode
    message: str = Field(description="one sentence, at most 1,000 characters")
    hint: str = Field(description="what to do about it")


class ProgressEvent(Reply):
    job_id: str
    stage: ProgressStage
    done: int
    total: int = Field(description="for tissue: strips read, then analysis steps")
    rate: float = Field(description="items per second")


class TokenEvent(Reply):
    job_id: str
    text: str = Field(description="the next piece of the answer, never half a character")


class CancelledEvent(Reply):
    job_id: str
    reason: Literal["request", "client-gone", "shutdown"]


class GenerationTimings(Reply):
    first_token_s: float
    generation_s: float
    tokens_per_s: float
    total_s: float
    reused_tokens: int = Field(description="prompt tokens whose KV cache was reused")


class TotalTiming(Reply):
    total_s: float


LatentsFrom = Literal["computed", "disk", "memory", "file"]


class Answered(Reply):
    job_id: str
    answer: str
    stop_reason: str = Field(description="why generation stopped: the end of the turn or the token limit")
    token_ids: list[int]
    demo: bool
    region_clipped: bool = Field(description="the region reached beyond the slide and was clipped to it")
    timings: GenerationTimings
    provenance: Provenance = optional("what gave this answer")


class Reliance(Reply):
    """How much an answer depends on the slide: mean log-likelihoods per answer token (nats)."""

    with_slide: float = Field(description="with this slide's latents")
    no_image: float = Field(description="with no image block in the prompt (the language model's prior)")
    other_slide: float = Field(description="with another slide's latents (other_from says which)")
    score: float = Field(description="with_slide - max(no_image, other_slide): nats per token this slide adds")
    flagged: bool = Field(description="with_slide - no_image < 0.1: the answer does not depend on the image")
    other_from: Literal["memory", "cache", "blank"] = Field(
        description="the other slide: the last other one in memory, the newest other in the cache, or blank latents"
    )


class AskDone(Answered):
    cache_hit: bool = Field(description="the latents were not computed for this job")
    latents_from: LatentsFrom
    latents_shape: list[int]
    tiles: int | None = Field(description="null for a features file")
    reliance: Reliance | None = Field(description="how much the answer depends on the slide; null for an empty answer")


class Faithfulness(Reply):
    """The map's deletion curve against random orders (mean answer log-likelihood drops, nats)."""

    deletion_area: float = Field(description="mean drop as groups go in the map's order, most evidence first")
    random_area: float = Field(description="the same, averaged over random orders")
    gap: float = Field(description="deletion_area - random_area: > 0 when the map beats chance")
    random_orders: int


class ExplainDone(Reply):
    job_id: str
    method: Literal["occlusion", "attention"] = Field(description="how the map was made; attention is a preview")
    tiles: int = Field(description="N, the slide's (or region's) tiles")
    groups: int = Field(description="K, the tile groups (fewer than asked when there are fewer tiles)")
    tile_size: int = Field(description="tile side in level-0 pixels")
    coords: list[list[int]] = Field(description="level-0 [x, y] of each tile's top-left corner (N)")
    values: list[float] = Field(
        description="evidence per tile (N): occlusion in nats, attention as shares summing to 1; larger = more"
    )
    group_of: list[int] = Field(description="each tile's group (N)")
    log_likelihood: float = Field(description="the log-likelihood of the answer given all tiles, nats")
    faithfulness: Faithfulness
    reliance: Reliance
    refined: list[int] = Field(description="groups split further in the finer pass; [] if none")
    provenance: Provenance = Field(description="what gave this map")
    timings: TotalTiming


class ViewDone(Answered):
    image_size: list[int] = Field(description="[height, width] of what the model saw")


class ScoreDone(Reply):
    job_id: str
    choices: list[str]
    mean_nll: list[float] = Field(
        description="per choice, the mean negative log-likelihood of its tokens (lower: likelier)"
    )
    best: str = Field(description="the likeliest choice")
    cache_hit: bool
    region_clipped: bool
    demo: bool
    timings: TotalTiming
    provenance: Provenance = optional("what gave these scores")


class EmbedDone(Reply):
    job_id: str
    tiles: int | None
    latents_shape: list[int]
    cache_hit: bool
    latents_from: LatentsFrom
    region_clipped: bool
    timings: TotalTiming


class ZeroShotMap(Reply):
    """Zero-shot per tile group: each group's probabilities from its own tiles alone."""

    tiles: int = Field(description="N, the slide's (or region's) tiles")
    groups: int = Field(description="K, the tile groups")
    tile_size: int = Field(description="a tile's side in level-0 pixels")
    coords: list[list[int]] = Field(description="[x, y] level-0 top-left of each tile (N)")
    group_of: list[int] = Field(description="each tile's group, 0 to K - 1 (N)")
    probabilities: list[list[float]] = Field(description="per group (K), per label: each row sums to 1")


class ZeroShotDone(Reply):
    job_id: str
    labels: list[str] = Field(description="the labels, in the order sent")
    probabilities: list[float] = Field(description="per label, from Prism's contrastive heads; they sum to 1")
    map: ZeroShotMap | None = Field(description="per tile group when asked (map: true), else null")
    model: Literal["prism"] = Field(description="Prism gave these, not ANTONI")
    provenance: Provenance = Field(description="the models and versions (adapter false: ANTONI took no part)")
    timings: TotalTiming


class ReportDone(Reply):
    job_id: str
    report: str = Field(description="Prism's draft, starting with the prompt")
    stop_reason: Literal["stop", "length"] = Field(description="the end of the text, or the token limit")
    model: Literal["prism"] = Field(description="Prism wrote this, not ANTONI")
    label: str = Field(description='show it next to the draft: "Draft by Prism (not ANTONI)"')
    provenance: Provenance = Field(description="the models and versions (adapter false: ANTONI took no part)")
    timings: TotalTiming


class Removed(Reply):
    memory: int
    disk: int


class ForgetDone(Reply):
    job_id: str
    removed: Removed = Field(description="cached latents dropped from memory and disk")


class SimilarSlide(Reply):
    slide: str = Field(description="absolute path of the slide")
    region: dict[str, Any] | None = Field(description="the region's GeoJSON geometry, or null for the whole slide")
    similarity: float = Field(description="cosine similarity of the slide embeddings, at most 1")
    thumbnail: str | None = Field(description="absolute path of a small PNG of the slide or region, or null")
    fingerprint: str = Field(description="the slide's content fingerprint (copies share it)")


class SimilarDone(Reply):
    job_id: str
    results: list[SimilarSlide] = Field(description="closest first; the source itself and missing files left out")
    indexed: int = Field(description="slides and regions in the index searched")
    timings: TotalTiming


class LoadedDone(Reply):
    job_id: str
    loaded: list[ModelPart]


# Replies to the requests answered at once, by request type.
ANSWERS: dict[str, type[BaseModel]] = {
    "hello": HelloReply,
    "status": StatusReply,
    "cancel": JobIdReply,
    "heartbeat": EmptyReply,
    "shutdown": EmptyReply,
}
EVENTS: dict[str, type[BaseModel]] = {
    "accepted": AcceptedReply,
    "busy": BusyReply,
    "progress": ProgressEvent,
    "token": TokenEvent,
    "cancelled": CancelledEvent,
}
DONE: dict[str, type[BaseModel]] = {
    "ask": AskDone,
    "score": ScoreDone,
    "explain": ExplainDone,
    "view": ViewDone,
    "embed": EmbedDone,
    "forget": ForgetDone,
    "load": LoadedDone,
    "unload": LoadedDone,
    "zero_shot": ZeroShotDone,
    "report": ReportDone,
    "similar": SimilarDone,
}


class ReplyDrift(AssertionError):
    """A daemon reply that does not match the schema: a bug in the daemon or in the schema."""


def reply_model(request_type: str, reply_type: str) -> type[BaseModel] | None:
    """The model of a reply of `reply_type` to a request of `request_type`, or None when none can come."""
    if reply_type == "error":
        return ErrorReply
    if request_type in ANSWERS:
        return ANSWERS[request_type] if reply_type == request_type else None
    return DONE.get(request_type) if reply_type == "done" else EVENTS.get(reply_type)


def check_reply(request_type: str, reply_type: str, content: dict[str, Any]) -> None:
    """Raise ReplyDrift unless the reply is one the schema allows for this request."""
    model = reply_model(request_type, reply_type)
    if model is None:
        raise ReplyDrift(f"A {request_type!r} request cannot be answered with {reply_type!r}.")
    try:
        model.model_validate(content)
    except ValidationError as exc:
        raise ReplyDrift(f"The {reply_type!r} reply to {request_type!r} drifts from the schema: {exc}") from None


# ------------------------------------------------------------------------------ the JSON Schema


def _named(table: dict[str, type[BaseModel]]) -> dict[str, dict[str, str]]:
    return {name: {"$ref": f"#/$defs/{model.__name__}"} for name, model in table.items()}


def json_schema() -> dict[str, Any]:
    """One document: every model under $defs, and maps from message types to them."""
    models = {Header, *REQUESTS.values(), *ANSWERS.values(), *EVENTS.values(), *DONE.values(), ErrorReply}
    ordered = sorted(models, key=lambda m: m.__name__)
    _, schema = models_json_schema([(m, "validation") for m in ordered], ref_template="#/$defs/{model}")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"antoni-bridge protocol {VERSION}",
        "description": "Generated by `python -m antoni_bridge.daemon.messages --write docs/protocol.schema.json`; "
        "see docs/protocol.md. x-requests: content of each request type; x-answers: the reply to each request "
        "answered at once (same type); x-events: job events; x-done: the done of each job; x-error: every error.",
        "x-header": {"$ref": "#/$defs/Header"},
        "x-requests": _named(REQUESTS),
        "x-answers": _named(ANSWERS),
        "x-events": _named(EVENTS),
        "x-done": _named(DONE),
        "x-error": {"$ref": "#/$defs/ErrorReply"},
        "$defs": schema["$defs"],
    }


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print or write protocol v1's JSON Schema.")
    parser.add_argument("--write", type=Path, metavar="FILE", help="write it to FILE (docs/protocol.schema.json)")
    args = parser.parse_args(argv)
    if args.write:
        args.write.write_text(schema_text(), encoding="utf-8")
    else:
        print(schema_text(), end="")


if __name__ == "__main__":
    main()
