"""Figures of evaluation reports, drawn with Pillow (no plotting library needed)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from antoni_bridge.files import replacing

CELL = 110
MARGIN = 120


def write_confusion(path: Path, labels: list[str], matrix: list[list[int]], title: str) -> None:
    """A confusion matrix: rows are the truth, columns the prediction; darker cells hold more cases."""
    size = len(labels)
    image = Image.new("RGB", (MARGIN + size * CELL + 20, MARGIN + size * CELL + 20), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 10), title, fill="black")
    largest = max(max(row) for row in matrix) or 1
    for i, label in enumerate(labels):
        draw.text((10, MARGIN + i * CELL + CELL // 2), label[:14], fill="black")
        draw.text((MARGIN + i * CELL + 8, MARGIN - 24), label[:14], fill="black")
        for j, count in enumerate(matrix[i]):
            shade = 255 - int(200 * count / largest)
            box = (MARGIN + j * CELL, MARGIN + i * CELL, MARGIN + (j + 1) * CELL, MARGIN + (i + 1) * CELL)
            draw.rectangle(box, fill=(shade, shade, 255), outline="black")
            draw.text((box[0] + CELL // 2 - 6, box[1] + CELL // 2 - 6), str(count), fill="black")
    with replacing(path) as tmp:
        image.save(tmp, format="PNG")
