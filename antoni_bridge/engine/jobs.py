"""The engine: the models, the latents (memory and disk) and the jobs on them, as plain Python calls.

Every front end reaches the model through here: the daemon is a transport over one `Engine`, and
`--local` runs call it in-process. Each job reports progress through `on_progress`, looks at
`cancelled` between tile batches and between tokens (raising `Cancelled`), and raises `BridgeError`
on bad input. A features file is read and checked before any model loads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from antoni_bridge import paths
from antoni_bridge.engine.choice import ModelChoice
from antoni_bridge.engine.latents import LatentMemory, Latents, read_features_file
from antoni_bridge.engine.prism_heads import DEFAULT_REPORT_PROMPT, DEFAULT_REPORT_TOKENS, PrismReport, PrismZeroShot
from antoni_bridge.engine.provenance import answer_provenance, model_provenance, weights_sha256
from antoni_bridge.engine.settings import EngineSettings
from antoni_bridge.engine.sources import FeaturesSource, SlideRoots, SlideSource, Source
from antoni_bridge.engine.tiles import TileFeatures, from_feature_file, read_tile_features_file
from antoni_bridge.errors import BridgeError
from antoni_bridge.model.options import DEFAULT_DECODING, GenerationOptions

if TYPE_CHECKING:  # slides.planning loads numpy, h5py and the tissue detector: only when a job runs
    from antoni_bridge.engine.similar import SimilarSlides
    from antoni_bridge.slides.planning import Progress

MODEL_PARTS = ("encoders", "model")
OnProgress = Callable[["Progress"], None] | None
IsCancelled = Callable[[], bool] | None


class Cancelled(Exception):
    """Raised inside a job when its `cancelled` callback says so."""


@dataclass
class Answer:
    text: str
    token_ids: list[int]
    stop_reason: str  # stop (end of turn) or length (token limit); a cancel raises instead
    provenance: dict[str, Any]
    timings: dict[str, float]
    latents_from: str | None = None  # computed, disk, memory, file; None for view
    latents_shape: list[int] | None = None
    tiles: int | None = None
    region_clipped: bool = False
    cache_hit: bool = False
    image_size: list[int] | None = None  # view: the image the model saw
    reliance: dict[str, Any] | None = None  # ask: how much the answer depends on the slide (engine.evidence)


@dataclass
class Scores:
    choices: list[str]
    mean_nll: list[float]  # per choice; lower is more likely
    best: str
    provenance: dict[str, Any]
    timings: dict[str, float]
    cache_hit: bool = False
    region_clipped: bool = False


@dataclass
class Explained:
    """An evidence map of an answer (engine.evidence): per-tile values with the tiles' places."""

    method: str
    tiles: int
    groups: int
    tile_size: int
    coords: list[list[int]]
    values: list[float]
    group_of: list[int]
    log_likelihood: float
    faithfulness: dict[str, Any]
    reliance: dict[str, Any]
    refined: list[int]
    provenance: dict[str, Any]
    timings: dict[str, float]


@dataclass
class Similar:
    results: list[dict[str, Any]]  # slide, region, similarity, thumbnail, fingerprint; best first
    indexed: int  # slides and regions in the index searched
    timings: dict[str, float]


@dataclass
class Embedded:
    tiles: int | None
    latents_shape: list[int]
    cache_hit: bool
    latents_from: str
    region_clipped: bool
    timings: dict[str, float] = field(default_factory=dict)


class Engine:
    def __init__(
        self,
        choice: ModelChoice,
        cache_dir: Path | None = None,
        slide_roots: Sequence[Path] = (),
        settings: EngineSettings | None = None,
    ) -> None:
        self.choice, self.settings = choice, settings or EngineSettings()
        self.settings.check()
        self.cache_dir = Path(cache_dir) if cache_dir is not None else paths.feature_cache_dir()
        self.roots = SlideRoots(slide_roots)
        self.memory = LatentMemory()
        self.encoders: Any = None  # encoders.pipeline.Encoders
        self.model: Any = None  # model.antoni.AntoniModel
        self.prism_text: Any = None  # encoders.prism_text.PrismText, loaded by the first zero-shot or report
        self.weights_sha256: str | None = None  # hashed once, when the model first loads
        self._weights: Path | None = None

    @cached_property
    def similar_slides(self) -> SimilarSlides:
        """The similar-slides indexes kept with the feature cache (numpy loads only when one is used)."""
        from antoni_bridge.engine.similar import SimilarSlides

        return SimilarSlides(self.cache_dir)

    # ------------------------------------------------------------------ models

    def weights_folder(self) -> Path:
        """The ANTONI-Alpha weights folder (a hub id is resolved once, with its revision)."""
        if self._weights is None:
            from antoni_bridge.encoders.sources import resolve_model_dir

            self._weights = resolve_model_dir(self.choice.weights, "ANTONI-Alpha weights", self.choice.revision)
        return self._weights

    def loaded(self) -> list[str]:
        return [part for part in MODEL_PARTS if getattr(self, part) is not None]

    def load(self, parts: Sequence[str] = MODEL_PARTS, progress: OnProgress = None) -> None:
        """Load what `parts` names and is not loaded yet, saying so first: the user sees why a start is slow."""
        missing = [part for part in MODEL_PARTS if part in parts and getattr(self, part) is None]
        if not missing:
            return
        _step(progress, "loading", 0, 1)  # one step: loading reports no finer progress
        if self.settings.threads:
            import torch

            torch.set_num_threads(self.settings.threads)
        if "encoders" in missing:
            from antoni_bridge.encoders.pipeline import Encoders

            c = self.choice
            self.encoders = Encoders.load(c.tile_encoder, c.slide_encoder, c.device, self.settings.encoder_precision())
        if "model" in missing:
            from antoni_bridge.model.antoni import AntoniModel

            folder, quant = self.weights_folder(), self.settings.model_quant(self.choice.quant)
            self.model = AntoniModel.load(folder, self.choice.llm, self.choice.device, quant)
            if self.weights_sha256 is None:
                self.weights_sha256 = weights_sha256(folder)
        _step(progress, "loading", 1, 1)

    def unload(self, parts: Sequence[str] = MODEL_PARTS) -> None:
        """Drop models and give their GPU memory back to other programs."""
        from antoni_bridge.gpu import release_unused

        for part in parts:
            setattr(self, part, None)
        if "encoders" in parts:
            self.prism_text = None
        release_unused()

    # ------------------------------------------------------------------ jobs

    def ask(
        self,
        source: Source,
        conversation: list[dict[str, Any]],
        options: GenerationOptions | None = None,
        *,
        on_text: Callable[[str], None] | None = None,
        on_progress: OnProgress = None,
        cancelled: IsCancelled = None,
    ) -> Answer:
        """The model's next turn in a conversation about a slide, a region or a features file."""
        start, options = time.perf_counter(), options or DEFAULT_DECODING
        latents = self._checked_latents(source, on_progress, cancelled)
        self.load(["model"], on_progress)
        _step(on_progress, "generating", 0, 1)
        result = self.model.answer(
            latents.values, conversation, options, on_text=on_text, cancelled=cancelled, prefix_key=latents.key
        )
        generated = _generated(result, self._provenance(options, result.stop_reason), start)
        reliance = self.reliance(latents, conversation, result.text) if result.text.strip() else None
        return Answer(
            **generated,
            latents_from=latents.source,
            latents_shape=list(latents.values.shape),
            tiles=latents.tiles,
            region_clipped=latents.clipped,
            cache_hit=latents.source != "computed",
            reliance=reliance,
        )

    def reliance(self, latents: Latents, conversation: list[dict[str, Any]], answer: str) -> dict[str, Any]:
        """How much `answer` depends on this slide: against no image and another slide (engine.evidence)."""
        from antoni_bridge.engine.evidence import other_latents, reliance

        other, other_from = other_latents(self.memory, self.cache_dir, latents)
        return reliance(self.model, latents.values, other, other_from, conversation, answer).to_dict()

    def explain(
        self,
        source: Source,
        conversation: list[dict[str, Any]],
        answer: str,
        *,
        method: str = "occlusion",
        groups: int = 64,
        random_orders: int = 8,
        on_progress: OnProgress = None,
        cancelled: IsCancelled = None,
    ) -> Explained:
        """Where on the slide `answer` (the reply to `conversation`) comes from: an occlusion map over tile
        groups with its faithfulness figure, and the answer's image reliance (engine.evidence)."""
        from antoni_bridge.engine.evidence import METHODS, MaskedScorer, attention_map, occlusion_map
        from antoni_bridge.model.prompt import check_asks

        start = time.perf_counter()
        check_asks(conversation)
        if not answer.strip():
            raise BridgeError("There is no answer to explain.", "give the answer's text")
        if method not in METHODS:
            raise BridgeError(f"The evidence method {method!r} is not available.", 'use "occlusion" or "attention"')
        report = _cancellable(on_progress, cancelled)
        tiles = self.tile_features(source, on_progress=on_progress, cancelled=cancelled)
        latents = self._checked_latents(source, on_progress, cancelled)
        self.load(["encoders", "model"], report)

        def step(stage: str, done: int, total: int) -> None:
            _step(report, stage, done, total)

        scorer = MaskedScorer(self.encoders.slide, self.model, tiles.features, conversation, answer, step)
        if method == "attention":
            mapped = attention_map(scorer, latents.values, tiles.coords, groups, random_orders)
        else:
            mapped = occlusion_map(scorer, tiles.coords, groups, random_orders)
        relied = self.reliance(latents, conversation, answer)
        return Explained(
            method=method,
            tiles=len(tiles),
            groups=mapped.groups,
            tile_size=tiles.tile_size,
            coords=[[int(x), int(y)] for x, y in tiles.coords],
            values=[float(v) for v in mapped.values],
            group_of=[int(g) for g in mapped.group_of],
            log_likelihood=mapped.log_likelihood,
            faithfulness=asdict(mapped.faithfulness),
            reliance=relied,
            refined=mapped.refined,
            provenance=self.provenance(),
            timings={"total_s": time.perf_counter() - start},
        )

    def zero_shot(
        self,
        source: Source,
        labels: list[str] | None = None,
        prompts: dict[str, list[str]] | None = None,
        *,
        map_groups: int | None = None,
        on_progress: OnProgress = None,
        cancelled: IsCancelled = None,
    ) -> PrismZeroShot:
        """Prism's zero-shot probabilities over labels (or prompt sets) for the slide, and per tile group
        when `map_groups` is given (engine.prism_heads)."""
        from antoni_bridge.engine.prism_heads import check_widths, group_map, label_probabilities, prompt_sets

        start, sets = time.perf_counter(), prompt_sets(labels, prompts)
        report = _cancellable(on_progress, cancelled)
        latents = self.latents(source, on_progress=on_progress, cancelled=cancelled)
        text = self.prism_heads(report)
        check_widths(text, latents.values)
        _step(report, "scoring", 0, 1)
        probabilities = label_probabilities(text, latents.values[:1], sets)[0].tolist()
        mapped = None
        if map_groups is not None:
            tiles = self.tile_features(source, on_progress=on_progress, cancelled=cancelled)
            self.load(["encoders"], report)
            mapped = group_map(self.encoders.slide, text, tiles, sets, map_groups, partial(_step, report))
        return PrismZeroShot(list(sets), probabilities, mapped, self._prism_provenance(), _total(start))

    def report(
        self,
        source: Source,
        prompt: str = DEFAULT_REPORT_PROMPT,
        max_new_tokens: int = DEFAULT_REPORT_TOKENS,
        beams: int = 1,
        *,
        on_text: Callable[[str], None] | None = None,
        on_progress: OnProgress = None,
        cancelled: IsCancelled = None,
    ) -> PrismReport:
        """Prism's report draft over the slide's latents, greedy or beam search (engine.prism_heads)."""
        from antoni_bridge.engine.prism_heads import check_widths, draft_report

        start, report = time.perf_counter(), _cancellable(on_progress, cancelled)
        latents = self.latents(source, on_progress=on_progress, cancelled=cancelled)
        text = self.prism_heads(report)
        check_widths(text, latents.values)
        step = partial(_step, report)
        draft = draft_report(text, latents.values[1:], prompt, max_new_tokens, beams, on_text, step)
        return PrismReport(draft.report, draft.stop_reason, self._prism_provenance(), _total(start))

    def prism_heads(self, progress: OnProgress = None) -> Any:
        """Prism's text heads from the slide encoder's folder (encoders.prism_text.PrismText), loaded once."""
        if self.prism_text is None:
            from antoni_bridge.encoders.prism_text import load_prism_text

            _step(progress, "loading", 0, 1)
            self.prism_text = load_prism_text(self.choice.slide_encoder, self.choice.device)
            _step(progress, "loading", 1, 1)
        return self.prism_text

    def _prism_provenance(self) -> dict[str, Any]:
        return {**self.provenance(), "adapter": False}

    def score(
        self,
        source: Source,
        question: str,
        choices: list[str],
        *,
        on_progress: OnProgress = None,
        cancelled: IsCancelled = None,
    ) -> Scores:
        """Multiple choice: each choice's mean negative log-likelihood as the answer to `question`."""
        start = time.perf_counter()
        latents = self._checked_latents(source, on_progress, cancelled)
        self.load(["model"], on_progress)
        _step(on_progress, "scoring", 0, 1)
        scores = self.model.score_choices(latents.values, question, choices)
        _check(cancelled)
        return Scores(
            choices=scores.choices,
            mean_nll=scores.mean_nll,
            best=scores.best,
            provenance=self.provenance(),
            timings={"total_s": time.perf_counter() - start},
            cache_hit=latents.source != "computed",
            region_clipped=latents.clipped,
        )

    def view(
        self,
        image: Any,  # np.ndarray (H, W, 3) uint8
        conversation: list[dict[str, Any]],
        options: GenerationOptions | None = None,
        *,
        on_text: Callable[[str], None] | None = None,
        on_progress: OnProgress = None,
        cancelled: IsCancelled = None,
    ) -> Answer:
        """MedGemma's own answer about an image (the adapter off), e.g. a field of view of a region."""
        start, options = time.perf_counter(), options or DEFAULT_DECODING
        self.load(["model"], on_progress)
        _step(on_progress, "generating", 0, 1)
        result = self.model.view(image, conversation, options, on_text=on_text, cancelled=cancelled)
        provenance = {**self._provenance(options, result.stop_reason), "adapter": False}
        return Answer(**_generated(result, provenance, start), image_size=list(image.shape[:2]))

    def field_of_view(self, source: SlideSource) -> tuple[Any, bool]:
        """The RGB field of view of a slide or region for `view`, and whether the region was clipped."""
        from antoni_bridge.slides.field_of_view import read_field_of_view
        from antoni_bridge.slides.reader import Slide
        from antoni_bridge.slides.regions import clip_to_slide

        with Slide(self.roots.allowed(source.path), source.slide_mpp) as slide:
            region = clip_to_slide(source.region, *slide.dimensions) if source.region else None
            return read_field_of_view(slide, region), region is not source.region

    def embed(self, source: SlideSource, *, on_progress: OnProgress = None, cancelled: IsCancelled = None) -> Embedded:
        """The latents of a slide or region, computed (or found) and kept for the questions to come."""
        start = time.perf_counter()
        latents = self.latents(source, on_progress=on_progress, cancelled=cancelled)
        return Embedded(
            tiles=latents.tiles,
            latents_shape=list(latents.values.shape),
            cache_hit=latents.source != "computed",
            latents_from=latents.source,
            region_clipped=latents.clipped,
            timings={"total_s": time.perf_counter() - start},
        )

    def forget(self, slide: Path | str | None) -> dict[str, int]:
        """Drop cached latents of one slide (all its regions, memory and disk), or of every slide."""
        from antoni_bridge.features.cache import FeatureCache
        from antoni_bridge.slides.reader import Slide

        fingerprint = None
        if slide is not None:
            with Slide(self.roots.allowed(slide)) as opened:
                fingerprint = opened.fingerprint
        dropped = self.memory.forget(fingerprint)
        if self.model is not None:
            for latents in dropped:
                self.model.forget_prefix(latents.key)
        self.similar_slides.forget(fingerprint)
        return {"memory": len(dropped), "disk": FeatureCache(self.cache_dir).forget(fingerprint)}

    def similar(
        self,
        source: Source,
        top: int = 10,
        within: str | None = None,
        *,
        on_progress: OnProgress = None,
        cancelled: IsCancelled = None,
    ) -> Similar:
        """The slides and regions embedded here closest to this one by slide embedding (cosine), best first;
        `within` keeps those under a folder or among a QuPath project's images."""
        from antoni_bridge.engine.similar import find_similar, within_filter

        start = time.perf_counter()
        keep = within_filter(within, self.roots) if within is not None else None
        latents = self.latents(source, on_progress=on_progress, cancelled=cancelled)
        self.load(["encoders"], on_progress)  # the index searched is the slide encoder's
        index = self.similar_slides.space(self.encoders.slide.identity)
        results = find_similar(index, source, latents, top, keep)
        return Similar(results, len(index), {"total_s": time.perf_counter() - start})

    # ------------------------------------------------------------------ latents

    def latents(self, source: Source, *, on_progress: OnProgress = None, cancelled: IsCancelled = None) -> Latents:
        """The latents a source names: a features file, or a slide (or region) from memory, the feature
        cache (latents alone) or the encoders."""
        report = _cancellable(on_progress, cancelled)
        if isinstance(source, FeaturesSource):
            if not _exists(source.path):
                hint = "create one with `antoni-bridge embed SLIDE --out FILE`"
                raise BridgeError(f"No features file at {source.path}.", hint)
            return read_features_file(FeaturesSource(self.roots.allowed(source.path)))
        source = replace(source, path=self.roots.allowed(source.path))
        remembered = self.memory.get(source)
        if remembered is not None:
            return remembered
        latents = self._embed(source, report)
        _check(cancelled)
        self.memory.put(source, latents)
        self._index(source, latents)
        return latents

    def tile_features(
        self, source: Source, *, on_progress: OnProgress = None, cancelled: IsCancelled = None
    ) -> TileFeatures:
        """The tile features, coordinates and tile size of a slide (or region) or features file, for maps:
        from the feature cache when the slide was embedded before (else embedded now, and cached)."""
        if isinstance(source, FeaturesSource):
            if not _exists(source.path):
                raise BridgeError(f"No features file at {source.path}.", "create one with `antoni-bridge embed`")
            return read_tile_features_file(self.roots.allowed(source.path))
        from antoni_bridge.encoders.pipeline import embed_slide
        from antoni_bridge.features.cache import FeatureCache
        from antoni_bridge.slides.planning import SlideRequest

        report = _cancellable(on_progress, cancelled)
        path = self.roots.allowed(source.path)
        self.load(["encoders"], report)
        request = SlideRequest(path, region=source.region, slide_mpp=source.slide_mpp)
        got = embed_slide(request, self.encoders, FeatureCache(self.cache_dir), report, self.settings.embed_settings())
        return from_feature_file(got.data, path.name)

    def _index(self, source: SlideSource, latents: Latents) -> None:
        """Make the slide (or region) findable by `similar`; an index that cannot be written is logged and
        costs the job nothing."""
        from antoni_bridge.engine.similar import index_latents

        try:
            index_latents(self.similar_slides, self.encoders.slide.identity, source, latents)
        except OSError as exc:
            logging.getLogger(__name__).warning("similar-slides index not updated: %s", exc)

    def _checked_latents(self, source: Source, on_progress: OnProgress, cancelled: IsCancelled) -> Latents:
        """Latents checked against the weights' shape before the language model takes its minute to load."""
        from antoni_bridge.model.antoni import check_latents
        from antoni_bridge.model.config import AntoniConfig

        latents = self.latents(source, on_progress=on_progress, cancelled=cancelled)
        _check(cancelled)
        if self.model is None:
            check_latents(latents.values, AntoniConfig.read(self.weights_folder()))
        return latents

    def _embed(self, source: SlideSource, report: Callable[[Progress], None]) -> Latents:
        import torch

        from antoni_bridge.encoders.pipeline import embed_latents
        from antoni_bridge.features.cache import FeatureCache
        from antoni_bridge.slides.planning import SlideRequest

        self.load(["encoders"], report)
        request = SlideRequest(source.path, region=source.region, slide_mpp=source.slide_mpp)
        got = embed_latents(
            request, self.encoders, FeatureCache(self.cache_dir), report, self.settings.embed_settings()
        )
        region = source.region.key() if source.region else ""
        source_name = "disk" if got.cache_hit else "computed"
        values = torch.from_numpy(got.latents)
        return Latents(values, f"{got.fingerprint}:{region}", source_name, got.tiles, got.clipped, got.fingerprint)

    # ------------------------------------------------------------------ reporting

    def provenance(self) -> dict[str, Any]:
        """What answers come from now (the content hash once the model has loaded)."""
        return model_provenance(self.choice, self.weights_sha256)

    def _provenance(self, options: GenerationOptions, stop_reason: str) -> dict[str, Any]:
        return answer_provenance(self.provenance(), options, stop_reason)

    def cache_usage(self) -> dict[str, int]:
        """Latents in memory; finished entries and their bytes in the feature cache (reads the disk)."""
        from antoni_bridge.features.cache import FeatureCache

        entries, size = FeatureCache(self.cache_dir).usage()
        return {"memory_entries": len(self.memory), "disk_entries": entries, "disk_bytes": size}

    def status(self) -> dict[str, Any]:
        from antoni_bridge.gpu import gpu_memory

        memory = gpu_memory()
        gpu = {k.replace("_mib", "_bytes"): int(v * 2**20) for k, v in memory.items()} if memory else None
        return {
            "device": self.choice.device,
            "loaded": self.loaded(),
            "gpu_memory": gpu,
            "provenance": self.provenance(),
            "cache": self.cache_usage(),
        }


def _generated(result: Any, provenance: dict[str, Any], start: float) -> dict[str, Any]:  # result: Generated
    if result.stop_reason == "cancelled":
        raise Cancelled
    return {
        "text": result.text,
        "token_ids": result.token_ids,
        "stop_reason": result.stop_reason,
        "provenance": provenance,
        "timings": {
            "first_token_s": result.first_token_s,
            "generation_s": result.total_s,
            "tokens_per_s": result.tokens_per_s,
            "total_s": time.perf_counter() - start,
            "reused_tokens": result.reused_tokens,
            "prompt_tokens": result.prompt_tokens,
        },
    }


def _exists(path: Path | str) -> bool:
    """Whether a file is there; a name the system cannot even look up (a part over 255 bytes) is bad input."""
    try:
        return Path(path).expanduser().exists()
    except OSError as exc:
        raise BridgeError(f"Cannot look up {str(path)[:300]} ({exc.strerror}).", "check the path") from None


def _total(start: float) -> dict[str, float]:
    return {"total_s": time.perf_counter() - start}


def _step(on_progress: OnProgress, stage: str, done: int, total: int) -> None:
    from antoni_bridge.slides.planning import Progress

    _report(on_progress, Progress(stage, done, total))


def _report(on_progress: OnProgress, progress: Progress) -> None:
    if on_progress is not None:
        on_progress(progress)


def _check(cancelled: IsCancelled) -> None:
    if cancelled is not None and cancelled():
        raise Cancelled


def _cancellable(on_progress: OnProgress, cancelled: IsCancelled) -> Callable[[Progress], None]:
    """A progress callback that is also where a cancel is seen between tile batches."""

    def report(progress: Progress) -> None:
        _check(cancelled)
        _report(on_progress, progress)

    return report
