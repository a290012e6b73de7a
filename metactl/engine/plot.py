"""A small line plot drawn with Pillow, so that reports need no plotting library."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from metactl.fileio import atomic_write

WIDTH, HEIGHT, MARGIN = 720, 420, 48


@dataclass(frozen=True)
class Series:
    label: str
    xs: list[float]
    ys: list[float]
    color: tuple[int, int, int]
    markers: bool = False  # draw points instead of a line


def _bounds(series: list[Series]) -> tuple[float, float, float, float]:
    xs = [x for item in series for x in item.xs]
    ys = [y for item in series for y in item.ys]
    pad = 0.05 * ((max(ys) - min(ys)) or 1.0)
    return min(xs), max(xs), min(ys) - pad, max(ys) + pad


def line_plot(series: list[Series], path: Path, title: str = "") -> Path:
    """Draw ``series`` on shared axes with a legend and write a PNG atomically."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    x_low, x_high, y_low, y_high = _bounds(series)

    def at(x: float, y: float) -> tuple[float, float]:
        return (MARGIN + (x - x_low) / (x_high - x_low) * (WIDTH - 2 * MARGIN),
                HEIGHT - MARGIN - (y - y_low) / (y_high - y_low) * (HEIGHT - 2 * MARGIN))

    draw.rectangle([MARGIN, MARGIN, WIDTH - MARGIN, HEIGHT - MARGIN], outline=(160, 160, 160))
    if y_low < 0 < y_high:
        draw.line([at(x_low, 0), at(x_high, 0)], fill=(220, 220, 220))
    for item in series:
        points = [at(x, y) for x, y in zip(item.xs, item.ys, strict=True)]
        if item.markers:
            for px, py in points:
                draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=item.color)
        else:
            draw.line(points, fill=item.color, width=2)
    for index, item in enumerate(series):
        top = MARGIN + 6 + 16 * index
        draw.rectangle([WIDTH - MARGIN - 190, top + 4, WIDTH - MARGIN - 178, top + 10],
                       fill=item.color)
        draw.text((WIDTH - MARGIN - 172, top), item.label, fill=(0, 0, 0))
    draw.text((MARGIN, 16), title, fill=(0, 0, 0))
    draw.text((MARGIN, HEIGHT - MARGIN + 8), f"x from {x_low:g} to {x_high:g}", fill=(0, 0, 0))
    with atomic_write(path, "choose a writable path for --plot") as temporary:
        image.save(temporary, format="PNG")
    return Path(path)
