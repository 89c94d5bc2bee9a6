"""Running the desk: the Qt application, the window, and a last line of defence for bugs.

PyQt ends the process when an exception escapes a slot and no excepthook is set; ours logs the
traceback to the terminal and shows one sentence in the window instead, so a bug never takes the
user's drawn regions and conversations down with it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from PyQt6.QtWidgets import QApplication

from antoni_bridge.desk.window import DeskWindow

log = logging.getLogger("antoni_bridge.desk")


def run(
    slide: Path | None = None,
    annotations: Path | None = None,
    slide_mpp: float | None = None,
    start_daemon: bool = False,
    serve_args: Sequence[str] = (),
) -> int:
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("ANTONI Desk")
    window = DeskWindow(serve_args=serve_args)
    sys.excepthook = _reporter(window)
    window.show()
    if slide is not None:
        window.open_slide(slide, slide_mpp, annotations)
    if start_daemon:
        window.start_daemon()
    return app.exec()


def _reporter(window: DeskWindow):  # -> the excepthook
    def report(kind: type[BaseException], error: BaseException, trace: TracebackType | None) -> None:
        log.error("unexpected error in the desk", exc_info=(kind, error, trace))
        window.messages.show_message(
            f"Unexpected error: {kind.__name__}: {error}", "this is a bug; the details are in the terminal"
        )

    return report
