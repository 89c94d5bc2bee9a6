"""Progress of a cohort run at two levels: slides (with an ETA) and tiles per second over the whole run."""

from __future__ import annotations

import sys
import time
from datetime import timedelta

from tqdm import tqdm

from antoni_bridge.cohort.manifest import FAILED, SlideRecord


class CohortProgress:
    """Two bars on stderr: slides ended of all (ETA from the tile rate), and tiles embedded (rate)."""

    def __init__(self, slides: int, enabled: bool = True) -> None:
        self.start = time.perf_counter()
        self.slides_total, self.slides_ended, self.failed = slides, 0, 0
        self.tiles_planned, self.tiles, self.planned_slides, self.unplanned_ended = 0, 0, 0, 0
        self.enabled = enabled
        self.slide_bar = self.tile_bar = None
        if enabled:
            self.slide_bar = tqdm(total=slides, desc="slides", unit="slide", file=sys.stderr, position=0)
            self.tile_bar = tqdm(total=0, desc="tiles", unit="tile", file=sys.stderr, position=1)

    def planned(self, tiles: int) -> None:
        self.tiles_planned += tiles
        self.planned_slides += 1
        if self.tile_bar is not None:
            self.tile_bar.total = self.tiles_planned
            self.tile_bar.refresh()

    def tiles_done(self, tiles: int) -> None:
        self.tiles += tiles
        if self.tile_bar is not None:
            self.tile_bar.update(tiles)

    def slide_ended(self, record: SlideRecord, planned: bool) -> None:
        """A slide is done, skipped or failed; `planned` when its tiles were counted by `planned`."""
        self.slides_ended += 1
        self.unplanned_ended += not planned
        self.failed += record.status == FAILED
        if self.slide_bar is not None:
            self.slide_bar.update(1)
            self.slide_bar.set_postfix_str(f"failed {self.failed}, ETA {self.eta()}", refresh=False)

    def eta(self) -> str:
        """Time left at the run's tile rate, the tiles of slides not yet planned estimated from those planned."""
        rate = self.tiles / max(time.perf_counter() - self.start, 1e-9)
        if not self.tiles or not self.planned_slides:
            return "?"
        unplanned = max(0, self.slides_total - self.planned_slides - self.unplanned_ended)
        estimate = self.tiles_planned + unplanned * self.tiles_planned / self.planned_slides
        return str(timedelta(seconds=round(max(0.0, estimate - self.tiles) / rate)))

    def refresh(self) -> None:
        if self.slide_bar is not None:
            self.slide_bar.set_postfix_str(f"failed {self.failed}, ETA {self.eta()}")

    def close(self) -> None:
        for bar in (self.tile_bar, self.slide_bar):
            if bar is not None:
                bar.close()
