"""Choosing a pyramid level: the one rule every reader uses (tiles, tissue, field of view, overview, the
desk's view): the coarsest level that is still at least as fine as wanted, so less is read and the
pixels are only ever resampled down."""

from __future__ import annotations

from collections.abc import Sequence

LEVEL_TOLERANCE = 1.01  # a level 1% coarser than wanted still counts (pyramids are rounded)


def coarsest_level(downsamples: Sequence[float], wanted: float, tolerance: float = LEVEL_TOLERANCE) -> int:
    """The coarsest level whose downsample is at most `wanted` (times `tolerance`); level 0 when none is."""
    usable = [i for i, d in enumerate(downsamples) if d <= wanted * tolerance]
    return max(usable, key=lambda i: downsamples[i]) if usable else 0
