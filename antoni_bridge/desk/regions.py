"""The region list: the whole slide, the regions drawn on it, and annotations imported from QuPath.

Picking an entry chooses what the next question is about and which conversation the chat shows.
"""

from __future__ import annotations

from PyQt6.QtCore import QSize, pyqtSignal
from PyQt6.QtWidgets import QListWidget, QListWidgetItem, QWidget

from antoni_bridge.slides.regions import Region

WHOLE_SLIDE = "Whole slide"


def name_new_region(region: Region, kind: str, taken: list[Region]) -> Region:
    """Drawn regions get a name like "Rectangle 2" so conversations and exports can say which."""
    if region.name:
        return region
    number = 1 + sum(1 for r in taken if r.name and r.name.startswith(kind))
    return Region(region.geometry, name=f"{kind} {number}")


class RegionList(QListWidget):
    picked = pyqtSignal(object)  # Region | None for the whole slide

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.regions: list[Region] = []
        self.currentRowChanged.connect(self._row_changed)
        self.set_regions([], None)

    def set_regions(self, regions: list[Region], selected: Region | None) -> None:
        """Show these regions (the whole slide first) with `selected` picked, without emitting `picked`."""
        self.blockSignals(True)
        self.clear()
        self.regions = list(regions)
        for label in [WHOLE_SLIDE, *(_label(r) for r in self.regions)]:
            self.addItem(QListWidgetItem(label))
        rows = [row for row, region in enumerate(self.regions, start=1) if region is selected]
        self.setCurrentRow(rows[0] if rows else 0)
        self.blockSignals(False)

    def selected(self) -> Region | None:
        row = self.currentRow()
        return self.regions[row - 1] if row > 0 else None

    def _row_changed(self, row: int) -> None:
        if row >= 0:
            self.picked.emit(self.selected())

    def sizeHint(self) -> QSize:
        hint = super().sizeHint()
        hint.setHeight(120)
        return hint


def _label(region: Region) -> str:
    x0, y0, x1, y1 = region.bounds
    return f"{region.name or 'Unnamed region'}  ({x1 - x0:.0f} x {y1 - y0:.0f} px)"
