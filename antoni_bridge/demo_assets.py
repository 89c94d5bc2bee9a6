"""The embedded demo: a demo slide, made on first use in the user cache, and the demo weights.

The demo weights ship with the package (antoni_bridge/train/demo_model, about 3 MB): tiny models in the
published layouts whose ANTONI part was trained on the synthetic demo task (antoni_bridge.demo_task)
by `antoni-bridge make-demo-weights`; its MADE.json says how. Making them takes about ten minutes of CPU,
too long for a first run, so they are made once and shipped. Nothing downloads.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from antoni_bridge import paths
from antoni_bridge.errors import BridgeError

DEMO_WEIGHTS_VARIABLE = "ANTONI_BRIDGE_DEMO_WEIGHTS"
SHIPPED = Path(__file__).parent / "train" / "demo_model"  # made by `make-demo-weights` (train/demo_weights.py)
DEMO_NOTE = "[demo weights: trained only on a synthetic stain/piece-count task, they know no pathology]"


@dataclass(frozen=True)
class DemoWeights:
    tile_encoder: Path
    slide_encoder: Path
    llm: Path
    antoni: Path

    @classmethod
    def under(cls, folder: Path) -> DemoWeights:
        return cls(folder / "tile-encoder", folder / "slide-encoder", folder / "llm", folder / "antoni")


def write_demo_weights(folder: Path, seed: int = 0, image_tokens: int = 256) -> DemoWeights:
    """Tiny Virchow, Prism, Gemma 3 (with the demo task's tokenizer) and ANTONI-Alpha in the published
    layouts, all random: what training starts from, and what tests that need a model that never stops use."""
    from antoni_bridge.encoders.demo import DEMO_PERCEIVER, write_demo_slide_encoder, write_demo_tile_encoder
    from antoni_bridge.model.demo import write_demo_antoni, write_demo_llm

    weights = DemoWeights.under(folder)
    write_demo_tile_encoder(weights.tile_encoder, seed)
    write_demo_slide_encoder(weights.slide_encoder, seed)
    write_demo_llm(weights.llm, seed)
    write_demo_antoni(weights.antoni, weights.llm, DEMO_PERCEIVER.latent_dim, seed, image_tokens)
    return weights


def demo_weights() -> DemoWeights:
    """The shipped demo weights (trained on the demo task), or the folder ANTONI_BRIDGE_DEMO_WEIGHTS names
    (demo weights made with `antoni-bridge make-demo-weights DIR`, trained or --untrained)."""
    chosen = os.environ.get(DEMO_WEIGHTS_VARIABLE)
    folder = Path(chosen).expanduser().resolve() if chosen else SHIPPED
    if not (folder / "antoni" / "config.json").is_file():
        raise BridgeError(
            f"No demo weights in {folder}.",
            f"make them with `antoni-bridge make-demo-weights {folder}`"
            + (f", or unset {DEMO_WEIGHTS_VARIABLE}" if chosen else ", or reinstall antoni-bridge"),
        )
    return DemoWeights.under(folder)


def demo_slide() -> Path:
    from antoni_bridge.slides.demo import write_demo_slide

    path = paths.demo_dir() / "demo-task-slide.svs"  # not the older, untrained demo's "demo-slide.svs"
    if not path.is_file():
        print(f"making the demo slide {path} (once)", file=sys.stderr)
        write_demo_slide(path)  # written to a temporary name and renamed
    return path
