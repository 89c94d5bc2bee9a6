"""Figures of evaluation reports, drawn with Pillow (no plotting library needed)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from antoni_bridge.files import replacing

MARGIN = 120


def write_confusion(path: Path, labels: list[str], matrix: list[list[int]], title: str) -> None:
    """A confusion matrix: rows are the truth, columns the prediction; darker cells hold more cases."""
    size = len(labels)
    cell = max(28, min(110, 1600 // size))  # up to about 1,700 px across, however many labels
    image = Image.new("RGB", (MARGIN + size * cell + 20, MARGIN + size * cell + 20), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 10), title, fill="black")
    largest = max(max(row) for row in matrix) or 1
    for i, label in enumerate(labels):
        draw.text((10, MARGIN + i * cell + cell // 2), label[:14], fill="black")
        draw.text((MARGIN + i * cell + 8, MARGIN - 24), label[:14], fill="black")
        for j, count in enumerate(matrix[i]):
            shade = 255 - int(200 * count / largest)
            box = (MARGIN + j * cell, MARGIN + i * cell, MARGIN + (j + 1) * cell, MARGIN + (i + 1) * cell)
            draw.rectangle(box, fill=(shade, shade, 255), outline="black")
            draw.text((box[0] + cell // 2 - 6, box[1] + cell // 2 - 6), str(count), fill="black")
    with replacing(path) as tmp:
        image.save(tmp, format="PNG")
