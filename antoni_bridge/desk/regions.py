"""The region list: the whole slide, the regions drawn on it, and annotations imported from QuPath.

Picking an entry chooses what the next question is about and which conversation the chat shows, and
moves the view to it. Regions are renamed in place (F2 or double-click).
"""

from __future__ import annotations

from typing import Any

from PyQt6.QtCore import QSize, Qt, pyqtSignal
from PyQt6.QtGui import QColor
from PyQt6.QtWidgets import QAbstractItemView, QListWidget, QListWidgetItem, QWidget

from antoni_bridge.slides.regions import Region, annotation_names, feature_properties

WHOLE_SLIDE = "Whole slide"
# QuPath's built-in class colours (qupath.lib.objects.classes.PathClassFactory.StandardPathClasses), for
# exports that name a class without writing its colour.
QUPATH_CLASS_COLOURS = {
    "Tumor": (200, 0, 0),
    "Stroma": (150, 200, 150),
    "Immune cells": (160, 90, 160),
    "Necrosis": (50, 50, 50),
    "Other": (255, 200, 0),
    "Region*": (0, 0, 180),
    "Ignore*": (180, 180, 180),
    "Positive": (200, 50, 50),
    "Negative": (112, 112, 225),
}


def name_new_region(region: Region, kind: str, taken: list[Region]) -> Region:
    """Drawn regions get a name like "Rectangle 2" so conversations and exports can say which."""
    if region.name:
        return region
    number = 1 + sum(1 for r in taken if r.name and r.name.startswith(kind))
    return Region(region.geometry, name=f"{kind} {number}")


def class_colour(feature: dict[str, Any]) -> QColor | None:
    """The colour QuPath gives an annotation: its own, else its class's (written, or QuPath's default)."""
    properties = feature_properties(feature)
    classification = properties.get("classification")
    for value in (properties.get("color"), classification.get("color") if isinstance(classification, dict) else None):
        if isinstance(value, list) and len(value) == 3 and all(isinstance(c, int) for c in value):
            return QColor(*(max(0, min(255, c)) for c in value))
        if isinstance(value, int):  # older exports: a packed ARGB integer
            return QColor((value >> 16) & 255, (value >> 8) & 255, value & 255)
    name = classification.get("name") if isinstance(classification, dict) else None
    default = QUPATH_CLASS_COLOURS.get(name) if isinstance(name, str) else None
    return QColor(*default) if default else None


def colours_by_name(features: list[dict[str, Any]]) -> dict[str, QColor]:
    """Annotation name -> its QuPath colour, for the features that have both."""
    colours = {}
    for feature in features:
        names, colour = annotation_names(feature), class_colour(feature)
        if names and colour is not None:
            colours[names[0]] = colour
    return colours


def describe_size(region: Region, mpp: float) -> str:
    """Width x height in um and the area in mm2 (um2 when small), as a pathologist reads sizes."""
    x0, y0, x1, y1 = region.bounds
    area_um2 = region.geometry.area * mpp * mpp
    area = f"{area_um2 / 1e6:.2f} mm²" if area_um2 >= 1e4 else f"{area_um2:,.0f} µm²"
    return f"{(x1 - x0) * mpp:,.0f} x {(y1 - y0) * mpp:,.0f} µm, {area}"


class RegionList(QListWidget):
    picked = pyqtSignal(object)  # Region | None for the whole slide
    renamed = pyqtSignal(object, str)  # the Region, its new name

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.regions: list[Region] = []
        self.setEditTriggers(QAbstractItemView.EditTrigger.EditKeyPressed | QAbstractItemView.EditTrigger.DoubleClicked)
        self.setToolTip("Pick what to ask about; a click goes to it. F2 or double-click: rename; Delete: delete")
        self.currentRowChanged.connect(self._row_changed)
        self.itemClicked.connect(lambda item: self._row_changed(self.row(item)))
        self.itemChanged.connect(self._item_changed)
        self.set_regions([], None, 1.0)

    def set_regions(
        self, regions: list[Region], selected: Region | None, mpp: float, colours: dict[str, QColor] | None = None
    ) -> None:
        """Show these regions (the whole slide first) with `selected` picked, without emitting signals."""
        self.blockSignals(True)
        self.clear()
        self.regions = list(regions)
        self.addItem(QListWidgetItem(WHOLE_SLIDE))
        for region in self.regions:
            item = QListWidgetItem(region.name or "Unnamed region")
            item.setToolTip(describe_size(region, mpp))
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsEditable)
            item.setData(Qt.ItemDataRole.UserRole, describe_size(region, mpp))
            colour = (colours or {}).get(region.key())
            if colour is not None:
                item.setForeground(colour)
            self.addItem(item)
        rows = [row for row, region in enumerate(self.regions, start=1) if region is selected]
        self.setCurrentRow(rows[0] if rows else 0)
        for row in range(1, self.count()):  # the size after the name, outside the editable text
            self.item(row).setText(f"{self.item(row).text()}  ({self.item(row).data(Qt.ItemDataRole.UserRole)})")
        self.blockSignals(False)

    def selected(self) -> Region | None:
        row = self.currentRow()
        return self.regions[row - 1] if row > 0 else None

    def _row_changed(self, row: int) -> None:
        if row >= 0:
            self.picked.emit(self.selected())

    def _item_changed(self, item: QListWidgetItem) -> None:
        row = self.row(item)
        if row > 0:
            size = f"  ({item.data(Qt.ItemDataRole.UserRole)})"
            self.renamed.emit(self.regions[row - 1], item.text().removesuffix(size).strip())

    def edit_selected(self) -> None:
        """Rename the picked region in place (F2)."""
        if self.currentRow() > 0:
            self.editItem(self.currentItem())

    def sizeHint(self) -> QSize:
        hint = super().sizeHint()
        hint.setHeight(120)
        return hint
