"""What a job's latents come from: a slide (or a region of it), or a features file; and which paths the
engine may read (a daemon can be kept to its slide folders)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from antoni_bridge.errors import BridgeError

if TYPE_CHECKING:  # shapely and numpy load only when a region is read
    from antoni_bridge.slides.regions import Region


@dataclass(frozen=True)
class SlideSource:
    path: Path
    region: Region | None = None
    slide_mpp: float | None = None  # for a slide whose file records none


@dataclass(frozen=True)
class FeaturesSource:
    path: Path  # .h5 (ours or upstream ANTONI's) or .pt holding the (513, D) latents


Source = SlideSource | FeaturesSource


def source_from(content: dict[str, Any]) -> Source:
    """The source a request names (`features`, or `slide` with `region` and `slide_mpp`), as the protocol
    spells it."""
    from antoni_bridge.slides.regions import Region

    if "features" in content:
        return FeaturesSource(Path(content["features"]))
    region = Region.from_geojson_dict(content["region"]) if content.get("region") else None
    return SlideSource(Path(content["slide"]), region, content.get("slide_mpp"))


class SlideRoots:
    """The folders the engine may read under (any path when none is given)."""

    def __init__(self, roots: Sequence[Path] = ()) -> None:
        self.roots = [Path(root).resolve() for root in roots]

    def allowed(self, path: Path | str) -> Path:
        """The path, resolved, when it lies under an allowed root."""
        from antoni_bridge.slides.reader import check_input_file

        text = str(path)
        check_input_file(Path(text).expanduser())  # a named pipe would block the worker; a link loop has no end
        try:
            resolved = Path(text).expanduser().resolve()
        except (OSError, RuntimeError) as exc:  # a link loop; ~user of no user
            raise BridgeError(f"{text[:300]} cannot be resolved ({exc.strerror or exc}).", "check the path") from None
        if self.roots and not any(resolved.is_relative_to(root) for root in self.roots):
            roots = ", ".join(str(root) for root in self.roots)
            raise BridgeError(f"{text} is outside the daemon's slide folders.", f"this daemon reads only under {roots}")
        return resolved
