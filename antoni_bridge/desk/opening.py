"""Opening a slide for the desk on a worker thread: checks, pyramid layout, thumbnail and tissue.

Opening reads a whole low-resolution level and finds tissue on it, a fraction of a second on most
slides and more on large ones; the window stays responsive meanwhile and learns the result by signal.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from PyQt6.QtCore import QObject, pyqtSignal
from PyQt6.QtGui import QImage

from antoni_bridge.errors import BridgeError
from antoni_bridge.slides.overview import draw_tissue, thumbnail
from antoni_bridge.slides.reader import Slide
from antoni_bridge.slides.tissue import ThresholdTissueDetector

log = logging.getLogger("antoni_bridge.desk")
OVERVIEW_SIDE = 1024


@dataclass(frozen=True)
class OpenedSlide:
    """What the window needs of an open slide; pixels beyond the thumbnail come from the tile loader."""

    path: Path
    mpp: float
    mpp_override: float | None  # what the user gave for a file without a scale; the daemon needs it too
    dimensions: tuple[int, int]
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    thumbnail: QImage  # plain, drawn under tiles that are not loaded yet
    tissue_overview: QImage  # the thumbnail with tissue outlines
    tissue_problem: str = ""  # why tissue could not be found, when it could not


def open_slide(path: Path, mpp: float | None = None) -> OpenedSlide:
    """Open, check and summarise a slide; a BridgeError says what is wrong with the file."""
    with Slide(path, mpp=mpp) as slide:
        image, scale = thumbnail(slide, OVERVIEW_SIDE)
        with_tissue, problem = image.copy(), ""
        try:
            draw_tissue(with_tissue, ThresholdTissueDetector().detect(slide), scale)
        except BridgeError as exc:  # the slide can still be viewed and asked about
            problem = f"{exc.message} ({exc.hint})"
        return OpenedSlide(
            path=path.resolve(),  # the daemon takes absolute paths only: it may run in another folder
            mpp=slide.mpp,
            mpp_override=mpp,
            dimensions=slide.dimensions,
            level_dimensions=slide.level_dimensions,
            level_downsamples=slide.level_downsamples,
            thumbnail=to_qimage(image),
            tissue_overview=to_qimage(with_tissue),
            tissue_problem=problem,
        )


def to_qimage(image: Image.Image) -> QImage:
    pixels = np.ascontiguousarray(np.asarray(image.convert("RGB")))
    height, width = pixels.shape[:2]
    return QImage(pixels.data, width, height, 3 * width, QImage.Format.Format_RGB888).convertToFormat(
        QImage.Format.Format_RGB32
    )


class SlideOpener(QObject):
    """Runs `open_slide` on a thread; only the latest request's result is delivered."""

    opened = pyqtSignal(object)  # OpenedSlide
    failed = pyqtSignal(str, str)

    def __init__(self) -> None:
        super().__init__()
        self._latest = 0
        self._lock = threading.Lock()

    def open(self, path: Path, mpp: float | None = None) -> None:
        with self._lock:
            self._latest += 1
            request = self._latest
        threading.Thread(target=self._run, args=(request, path, mpp), name="desk-open", daemon=True).start()

    def _run(self, request: int, path: Path, mpp: float | None) -> None:
        try:
            result: OpenedSlide | tuple[str, str] = open_slide(path, mpp)
        except BridgeError as exc:
            result = (exc.message, exc.hint)
        except Exception as exc:  # a reader bug on an odd file must not take the window down
            log.exception("opening %s failed", path)
            result = (f"{path.name} could not be opened ({type(exc).__name__}: {exc}).", "see the terminal's log")
        with self._lock:
            if request != self._latest:  # the user opened another slide meanwhile
                return
        if isinstance(result, OpenedSlide):
            self.opened.emit(result)
        else:
            self.failed.emit(*result)
