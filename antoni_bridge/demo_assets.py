"""The embedded demo: a demo slide and demo weights, made on first use in the user cache.

Both are built by our own code (nothing downloads) and written to a temporary folder that is renamed
into place, so an interrupted first run never leaves half a demo behind.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from antoni_bridge import paths
from antoni_bridge.files import replacing_folder

DEMO_NOTE = "[demo weights: random, the answer means nothing]"


@dataclass(frozen=True)
class DemoWeights:
    tile_encoder: Path
    slide_encoder: Path
    llm: Path
    antoni: Path

    @classmethod
    def under(cls, folder: Path) -> DemoWeights:
        return cls(folder / "tile-encoder", folder / "slide-encoder", folder / "llm", folder / "antoni")


def write_demo_weights(folder: Path) -> DemoWeights:
    """Tiny random-weight Virchow, Prism, Gemma 3 and ANTONI-Alpha in the published layouts."""
    from antoni_bridge.encoders.demo import DEMO_PERCEIVER, write_demo_slide_encoder, write_demo_tile_encoder
    from antoni_bridge.model.demo import write_demo_antoni, write_demo_llm

    weights = DemoWeights.under(folder)
    write_demo_tile_encoder(weights.tile_encoder)
    write_demo_slide_encoder(weights.slide_encoder)
    write_demo_llm(weights.llm)
    write_demo_antoni(weights.antoni, weights.llm, DEMO_PERCEIVER.latent_dim)
    return weights


def demo_weights() -> DemoWeights:
    folder = paths.demo_dir() / "weights"
    if not (folder / "antoni" / "config.json").is_file():
        print(f"making the demo weights in {folder} (once)", file=sys.stderr)
        _build_atomically(folder, write_demo_weights)
    return DemoWeights.under(folder)


def demo_slide() -> Path:
    from antoni_bridge.slides.demo import write_demo_slide

    path = paths.demo_dir() / "demo-slide.svs"
    if not path.is_file():
        print(f"making the demo slide {path} (once)", file=sys.stderr)
        write_demo_slide(path)  # written to a temporary name and renamed
    return path


def _build_atomically(folder: Path, build) -> None:  # build: Callable[[Path], object]
    with replacing_folder(folder) as tmp:
        build(tmp)
