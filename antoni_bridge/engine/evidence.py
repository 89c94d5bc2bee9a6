"""Evidence for an answer already given: which parts of the slide it depends on, and how much it relies on
the image at all.

The map is occlusion over tile groups, measured inside the model: the slide's tiles are split into K
compact groups (groups.tile_groups); for each group the slide encoder runs with that group's tiles left
out of its input (a tile mask: no tile is read or embedded again), and the answer's tokens are scored
teacher-forced. evidence(group) = log p(answer | all tiles) - log p(answer | all but the group), in nats
of the whole answer; each tile gets its group's value. Perturbation maps of this kind are faithful where
raw attention maps often are not; leaving tiles out renormalises the encoder's softmax over fewer tiles,
so every map comes with a check against random deletions (its faithfulness figure).

Finer pass: the REFINE_TOP groups of highest evidence are each split into REFINE_SPLIT compact
sub-groups (the same bisection on their tiles), each sub-group left out alone; the tiles of a refined
group then carry their sub-group's drop instead of the group's. Their `group_of` stays the coarse group.

Faithfulness: a deletion curve drops groups in the map's order (most evidence first) and measures the
answer's log-likelihood drop after 10%, 25%, 50% and 75% of the groups are gone; the same for
`random_orders` random orders (seeded, so a map is reproducible). deletion_area and random_area are the
mean drop over those points (an area over the perturbation curve, in nats); gap = deletion_area -
random_area is positive when the map finds what the answer depends on faster than chance.

The attention preview (`attention_map`, method "attention", never the default) reads attention instead:
the projector's attention over the latent rows times the perceiver's last cross-attention over the
tiles, the share of the image tokens' attention reaching each tile. It gets the same faithfulness check.

Reliance compares the answer's mean per-token log-likelihood with this slide's latents (with_slide),
with no image block in the prompt at all (no_image: the language model's prior) and with another
slide's latents (other_slide; see `other_latents`). score = with_slide - max(no_image, other_slide):
how many nats per token this slide adds over the better control. flagged: with_slide - no_image <
FLAG_NATS, i.e. the answer is about as likely without any image: it does not depend on the image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from antoni_bridge.engine.groups import group_masks, tile_groups
from antoni_bridge.errors import BridgeError

METHODS = ("occlusion", "attention")
GROUPS = 64
RANDOM_ORDERS = 8
REFINE_TOP = 4  # groups split further in the finer pass
REFINE_SPLIT = 4  # sub-groups per refined group
CURVE_FRACTIONS = (0.1, 0.25, 0.5, 0.75)  # of the groups dropped, where deletion curves are measured
MASK_BATCH = 16  # masks per slide-encoder and language-model pass: memory stays bounded on huge slides
FLAG_NATS = 0.1  # per token: under this gain over no image, an answer does not depend on the image
OTHER_FROM_DISK = 8  # newest feature-cache entries looked at for another slide's latents
Step = Callable[[str, int, int], None]  # stage, done, total; raises to cancel


@dataclass
class Faithfulness:
    deletion_area: float
    random_area: float
    gap: float
    random_orders: int


@dataclass
class EvidenceMap:
    values: np.ndarray  # (N,) evidence per tile, nats
    group_of: np.ndarray  # (N,) each tile's group
    groups: int
    log_likelihood: float  # log p(answer | all tiles), nats
    faithfulness: Faithfulness
    refined: list[int]


@dataclass
class Reliance:
    with_slide: float
    no_image: float
    other_slide: float
    score: float
    flagged: bool
    other_from: str  # where the other slide's latents came from: memory, cache or blank

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class MaskedScorer:
    """log p(answer | the slide with only the kept tiles), for many keep-masks, streamed in batches of masks
    through the slide encoder (tile keys and values computed once) and the language model."""

    def __init__(
        self,
        encoder: Any,  # encoders.prism.SlideEncoder
        model: Any,  # model.antoni.AntoniModel
        features: np.ndarray,
        conversation: list[dict[str, Any]],
        answer: str,
        step: Step,
        batch_size: int = MASK_BATCH,
    ) -> None:
        self.encoder, self.model, self.step = encoder, model, step
        self.features = torch.from_numpy(np.asarray(features, dtype=np.float32))
        self.conversation, self.answer, self.batch_size = conversation, answer, batch_size

    def __call__(self, keep: np.ndarray, stage: str) -> np.ndarray:
        """Summed log-likelihood of the answer (M,) under each keep-mask (M, N)."""
        scores: list[np.ndarray] = []
        self.step(stage, 0, len(keep))
        for latents in self.encoder.encode_masked(self.features, torch.from_numpy(keep), self.batch_size):
            token_lp = self.model.score_answer(latents, self.conversation, self.answer)
            scores.append(token_lp.sum(dim=1).double().cpu().numpy())
            self.step(stage, sum(len(s) for s in scores), len(keep))
        return np.concatenate(scores)


def occlusion_map(
    score: MaskedScorer,
    coords: np.ndarray,
    groups: int = GROUPS,
    random_orders: int = RANDOM_ORDERS,
    refine_top: int = REFINE_TOP,
) -> EvidenceMap:
    """The occlusion map of an answer over `groups` compact tile groups, refined and checked (module doc)."""
    if len(coords) < 2:
        raise BridgeError("The slide has a single tile; there is nothing to compare it with.", "give a larger region")
    labels = tile_groups(coords, groups)
    k = int(labels.max()) + 1
    score.step("grouping", 1, 1)
    keep = np.vstack([np.ones((1, len(labels)), dtype=bool), group_masks(labels, np.arange(k))])
    scores = score(keep, "occlusion")
    full, drops = float(scores[0]), scores[0] - scores[1:]
    values = drops[labels]
    refined = _refine(score, coords, labels, drops, full, values, refine_top)
    checked = faithfulness(score, labels, drops, full, random_orders)
    return EvidenceMap(values, labels, k, full, checked, refined)


def attention_map(
    score: MaskedScorer,
    latents: torch.Tensor,
    coords: np.ndarray,
    groups: int = GROUPS,
    random_orders: int = RANDOM_ORDERS,
) -> EvidenceMap:
    """The cheap preview, labelled "attention" and never the default: each tile's value is the share of the
    image tokens' attention that reaches it, the projector's attention over the latent rows times the
    perceiver's last cross-attention over the tiles (values sum to 1; they are not nats). Attention maps
    are often unfaithful, so the preview gets the same deletion check, its groups ordered by attention mass.
    """
    prism = score.encoder.tile_attention(score.features)  # (513, N)
    projector = score.model.projection_layer
    rows = latents[None].to(projector.query_tokens.device, projector.query_tokens.dtype)
    with torch.inference_mode():
        pooled = projector.attention(rows)[0].float().cpu()  # (tokens, 513)
    values = (pooled @ prism).mean(dim=0).double().numpy()
    labels = tile_groups(coords, groups)
    k = int(labels.max()) + 1
    score.step("grouping", 1, 1)
    mass = np.bincount(labels, weights=values, minlength=k)
    full = float(score(np.ones((1, len(labels)), dtype=bool), "scoring")[0])
    return EvidenceMap(values, labels, k, full, faithfulness(score, labels, mass, full, random_orders), [])


def _refine(
    score: MaskedScorer,
    coords: np.ndarray,
    labels: np.ndarray,
    drops: np.ndarray,
    full: float,
    values: np.ndarray,
    refine_top: int,
) -> list[int]:
    """The finer pass (module doc): writes sub-group drops into `values`; returns the refined groups."""
    top = [int(g) for g in np.argsort(-drops, kind="stable")[:refine_top] if np.sum(labels == g) >= 2]
    parts: list[np.ndarray] = []  # tile indices of each sub-group
    for group in top:
        members = np.flatnonzero(labels == group)
        sub = tile_groups(coords[members], REFINE_SPLIT)
        parts += [members[sub == s] for s in range(int(sub.max()) + 1)]
    if not parts:
        return []
    keep = np.ones((len(parts), len(labels)), dtype=bool)
    for row, part in enumerate(parts):
        keep[row, part] = False
    for part, scored in zip(parts, score(keep, "refining"), strict=True):
        values[part] = full - scored
    return top


def curve_points(groups: int) -> list[int]:
    """How many groups are dropped at each point of a deletion curve (never all of them)."""
    return sorted({min(max(round(f * groups), 1), groups - 1) for f in CURVE_FRACTIONS})


def faithfulness(
    score: MaskedScorer, labels: np.ndarray, drops: np.ndarray, full: float, random_orders: int
) -> Faithfulness:
    """Deletion curve in the order of `drops` (each group's evidence) against `random_orders` seeded random
    orders (module doc); `full` is the answer's log-likelihood with every tile."""
    k = len(drops)
    rng = np.random.default_rng(0)
    orders = [np.argsort(-drops, kind="stable")] + [rng.permutation(k) for _ in range(random_orders)]
    points = curve_points(k)
    keep = np.array([~np.isin(labels, order[:m]) for order in orders for m in points])
    curve = (full - score(keep, "faithfulness")).reshape(len(orders), len(points))
    deletion = float(curve[0].mean())
    random = float(curve[1:].mean()) if random_orders else 0.0
    return Faithfulness(deletion, random, deletion - random, random_orders)


def reliance(
    model: Any,  # model.antoni.AntoniModel
    latents: torch.Tensor,
    other: torch.Tensor,
    other_from: str,
    conversation: list[dict[str, Any]],
    answer: str,
) -> Reliance:
    """How much `answer` depends on this slide (module doc): two forward passes."""
    both = torch.stack([latents.float(), other.float().to(latents.device)])
    with_slide, other_slide = (float(v) for v in model.score_answer(both, conversation, answer).mean(dim=1))
    no_image = float(model.score_answer(None, conversation, answer).mean())
    score = with_slide - max(no_image, other_slide)
    return Reliance(with_slide, no_image, other_slide, score, with_slide - no_image < FLAG_NATS, other_from)


def other_latents(memory: Any, cache_root: Path, latents: Any) -> tuple[torch.Tensor, str]:
    """Another slide's latents for the wrong-image control: the most recently used other slide in the
    engine's memory, else the newest other entry of the feature cache, else a blank slide (all-zero latents:
    an image with no content). `latents` (engine.latents.Latents) names this slide."""
    shape = tuple(latents.values.shape)
    for entry in reversed(list(memory.entries.values())):
        if _other(entry.fingerprint, entry.key, latents) and tuple(entry.values.shape) == shape:
            return entry.values, "memory"
    found = _other_on_disk(cache_root, latents, shape)
    if found is not None:
        return found, "cache"
    return torch.zeros(shape), "blank"


def _other(fingerprint: str | None, key: str, latents: Any) -> bool:
    if latents.fingerprint is not None and fingerprint is not None:
        return fingerprint != latents.fingerprint
    return key != latents.key


def _other_on_disk(root: Path, latents: Any, shape: tuple[int, ...]) -> torch.Tensor | None:
    import h5py

    files = sorted(Path(root).glob("*.h5"), key=_mtime, reverse=True)[:OTHER_FROM_DISK]
    for file in files:
        try:
            with h5py.File(file, "r") as h5:
                fingerprint = str(h5.attrs.get("slide_fingerprint", ""))
                values = h5["latents"][()] if "latents" in h5 else None
        except Exception:  # a damaged or half-deleted entry is skipped (h5py raises many types)
            continue
        if values is not None and values.shape == shape and fingerprint and fingerprint != latents.fingerprint:
            return torch.from_numpy(np.asarray(values, dtype=np.float32))
    return None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
