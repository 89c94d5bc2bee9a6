"""Prism's own heads on the latents ANTONI reads: zero-shot labels (for the slide, and per tile group as a
map) and a report draft. Prism is a different model from ANTONI; what comes from here is labelled so.

Zero-shot follows Prism's `zero_shot`: every phrasing of every label is scored against the slide
embedding, one softmax runs over all phrasings, and each label gets the sum of its phrasings' shares.
A map scores each tile group on its own: the group's slide embedding comes from the slide encoder run
over that group's tiles alone (the masked encoder), so no tile of another group takes part.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from antoni_bridge.errors import BridgeError

if TYPE_CHECKING:  # the engine imports this module at start; torch loads with the first job
    import torch

MIN_LABELS, MAX_LABELS = 2, 64
MAX_PHRASINGS = 32
MAX_BEAMS = 16
MAX_REPORT_TOKENS = 1000  # Prism's text model takes 1024 positions, the prompt included
PRISM = "prism"  # the `model` of every result from here
DEFAULT_GROUPS = 64
DEFAULT_REPORT_PROMPT = "Diagnosis:"  # how Prism's training reports begin
DEFAULT_REPORT_TOKENS = 100  # Prism's generate: max_length 100
REPORT_LABEL = "Draft by Prism (not ANTONI)"
Step = Callable[[str, int, int], None]  # stage, done, total; raises Cancelled when the job is cancelled


def prompt_sets(labels: list[str] | None, prompts: dict[str, list[str]] | None) -> dict[str, list[str]]:
    """Phrasings per label: `labels` (each its own phrasing) or `prompts` ({label: [phrasing, ...]})."""
    if (labels is None) == (prompts is None):
        raise BridgeError("Zero-shot needs labels or prompt sets, not both and not neither.", 'e.g. --labels "a,b"')
    sets = {label: [label] for label in labels} if labels is not None else dict(prompts or {})
    names = [name.strip() for name in (labels if labels is not None else sets)]
    if not MIN_LABELS <= len(sets) <= MAX_LABELS or len(set(names)) != len(names) or not all(names):
        raise BridgeError(
            f"Zero-shot needs {MIN_LABELS} to {MAX_LABELS} different, non-empty labels (got {len(names)}).",
            "probabilities are shared among the labels: give at least two, e.g. --labels tumour,normal",
        )
    for label, phrasings in sets.items():
        if not 1 <= len(phrasings) <= MAX_PHRASINGS or not all(p.strip() for p in phrasings):
            raise BridgeError(
                f"The label {label!r} needs 1 to {MAX_PHRASINGS} non-empty phrasings.", "give at least one"
            )
    return sets


def label_probabilities(text: Any, embeddings: torch.Tensor, sets: dict[str, list[str]]) -> torch.Tensor:
    """(B, labels) probabilities for slide embeddings (B, D); text: encoders.prism_text.PrismText."""
    tokenize = text.tokenizer
    token_lists = [[tokenize.encode(p, add_special_tokens=False) for p in phrasings] for phrasings in sets.values()]
    return text.label_probabilities(embeddings, token_lists)


def group_map(
    slide_encoder: Any,  # encoders.prism.SlideEncoder
    text: Any,
    tiles: Any,  # engine.tiles.TileFeatures
    sets: dict[str, list[str]],
    groups: int,
    step: Step,
) -> dict[str, Any]:
    """Each tile group's label probabilities, from its own slide embedding (its tiles alone)."""
    import torch

    from antoni_bridge.engine.groups import group_masks, tile_groups

    step("grouping", 0, 1)
    labels = tile_groups(tiles.coords, groups)
    count = int(labels.max()) + 1 if len(labels) else 0
    keep = ~torch.from_numpy(group_masks(labels, list(range(count))))
    step("grouping", 1, 1)
    rows: list[list[float]] = []
    features = torch.from_numpy(tiles.features)
    for batch in slide_encoder.encode_masked(features, keep):
        rows += label_probabilities(text, batch[:, 0].cpu(), sets).tolist()
        step("scoring", len(rows), count)
    return {
        "tiles": len(tiles),
        "groups": count,
        "tile_size": tiles.tile_size,
        "coords": [[int(x), int(y)] for x, y in tiles.coords],
        "group_of": [int(g) for g in labels],
        "probabilities": rows,
    }


@dataclass
class PrismZeroShot:
    labels: list[str]
    probabilities: list[float]  # per label, summing to 1
    map: dict[str, Any] | None  # per tile group (group_map), when asked
    provenance: dict[str, Any]
    timings: dict[str, float]


@dataclass
class PrismReport:
    report: str
    stop_reason: str  # stop or length; a cancel raises instead
    provenance: dict[str, Any]
    timings: dict[str, float]


@dataclass
class Draft:
    report: str
    stop_reason: str  # stop (end of text) or length (token limit)


def draft_report(
    text: Any,
    latents: torch.Tensor,
    prompt: str,
    max_new_tokens: int,
    beams: int,
    on_text: Callable[[str], None] | None,
    step: Step,
) -> Draft:
    """Prism's report from `prompt` over the latents (512, D). Greedy text streams as it is decided; beam
    search's best beam changes until the end, so its text is sent once, when the search ends."""
    tokenizer = text.tokenizer
    if not prompt.strip():
        raise BridgeError("The report prompt is empty.", 'leave it out for Prism\'s "Diagnosis:"')
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
    streamed = ""

    def decoded(new: list[int]) -> str:
        return tokenizer.decode(prompt_ids + new, skip_special_tokens=True)

    def on_step(new: list[int]) -> None:
        nonlocal streamed
        step("generating", len(new), max_new_tokens)  # raises Cancelled when the job is cancelled
        if beams == 1:
            streamed = _stream(decoded(new), streamed, on_text)

    step("generating", 0, max_new_tokens)
    streamed = _stream(decoded([]), streamed, on_text) if beams == 1 else streamed
    generated = text.generate(latents, prompt_ids, max_new_tokens, beams=beams, on_step=on_step)
    report = decoded(generated.token_ids)
    _stream(report, streamed, on_text)
    return Draft(report, generated.stop_reason)


def _stream(current: str, streamed: str, on_text: Callable[[str], None] | None) -> str:
    """Send what `current` adds to the text already sent; hold back while detokenising rewrote the end."""
    if on_text is None or not current.startswith(streamed) or current == streamed:
        return streamed
    on_text(current[len(streamed) :])
    return current


def check_widths(text: Any, latents: torch.Tensor) -> None:
    """The latents must come from the slide encoder these text heads were trained with."""
    if latents.ndim != 2 or latents.shape[1] != text.config.context_dim or latents.shape[0] < 2:
        raise BridgeError(
            f"These latents are {tuple(latents.shape)}; Prism's text heads read (513, {text.config.context_dim}).",
            "use latents of the same Prism slide encoder the text heads come from",
        )
