"""One engine under thin front ends: models, latents and jobs as plain Python calls (see jobs.Engine)."""

from antoni_bridge.engine.choice import ModelChoice
from antoni_bridge.engine.jobs import MODEL_PARTS, Answer, Cancelled, Embedded, Engine, Explained, Scores, Similar
from antoni_bridge.engine.settings import EngineSettings
from antoni_bridge.engine.sources import FeaturesSource, SlideSource, source_from
from antoni_bridge.model.options import DEFAULT_DECODING, GenerationOptions, options_from

__all__ = [
    "DEFAULT_DECODING",
    "MODEL_PARTS",
    "Answer",
    "Cancelled",
    "Embedded",
    "Engine",
    "EngineSettings",
    "Explained",
    "FeaturesSource",
    "GenerationOptions",
    "ModelChoice",
    "Scores",
    "Similar",
    "SlideSource",
    "options_from",
    "source_from",
]
