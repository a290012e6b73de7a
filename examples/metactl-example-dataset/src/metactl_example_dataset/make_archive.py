"""Make the example dataset's archive, as its publisher would, byte for byte the same each time.

``python -m metactl_example_dataset.make_archive MIRROR`` writes ``MIRROR/example-shapes/
shapes.zip`` (a folder laid out like a download mirror) and prints its checksums, which the
card records. 20 classes (a shape in a colour) of 10 images of 28x28 pixels, each drawn at a
seeded random position and size on a noisy background; 10 / 5 / 5 classes for train, val and
test. Images are PPM files and the zip stores them uncompressed with fixed dates, so the bytes
depend on nothing but this file.
"""

from __future__ import annotations

import hashlib
import io
import random
import sys
import zipfile
from pathlib import Path

SIDE = 28
IMAGES_PER_CLASS = 10
SHAPES = ("disc", "square", "triangle", "cross", "ring")
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220),
           "yellow": (230, 200, 40)}
SPLITS = {"train": 10, "val": 5, "test": 5}
DATE = (2024, 1, 1, 0, 0, 0)


def inside(shape: str, x: float, y: float, radius: float) -> bool:
    """Whether (x, y), relative to the shape's centre, is on a shape of that ``radius``."""
    if shape == "disc":
        return x * x + y * y <= radius * radius
    if shape == "square":
        return max(abs(x), abs(y)) <= radius * 0.8
    if shape == "triangle":
        return -radius * 0.7 <= y <= radius * 0.7 and abs(x) <= (y + radius * 0.7) * 0.7
    if shape == "cross":
        return min(abs(x), abs(y)) <= radius * 0.3 and max(abs(x), abs(y)) <= radius
    return radius * 0.55 <= (x * x + y * y) ** 0.5 <= radius  # ring


def draw(shape: str, colour: tuple[int, int, int], rng: random.Random) -> bytes:
    """One binary PPM (P6) image of ``shape`` in ``colour``."""
    radius = rng.uniform(6, 10)
    centre_x, centre_y = rng.uniform(radius, SIDE - radius), rng.uniform(radius, SIDE - radius)
    pixels = bytearray()
    for row in range(SIDE):
        for column in range(SIDE):
            on = inside(shape, column + 0.5 - centre_x, row + 0.5 - centre_y, radius)
            base = colour if on else (235, 235, 235)
            pixels += bytes(max(0, min(255, value + rng.randint(-20, 20))) for value in base)
    return f"P6\n{SIDE} {SIDE}\n255\n".encode() + bytes(pixels)


def classes() -> list[str]:
    """The 20 class names, in a fixed, mixed order (so every split has varied shapes)."""
    names = [f"{colour}-{shape}" for shape in SHAPES for colour in COLOURS]
    random.Random(7).shuffle(names)
    return names


def archive_bytes() -> bytes:
    """The zip: ``shapes/<split>/<class>/<n>.ppm``."""
    rng = random.Random(0)
    buffer = io.BytesIO()
    names = iter(classes())
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as bundle:
        for split, count in SPLITS.items():
            for _ in range(count):
                name = next(names)
                colour, shape = name.split("-")
                for index in range(IMAGES_PER_CLASS):
                    member = zipfile.ZipInfo(f"shapes/{split}/{name}/{index:02d}.ppm", DATE)
                    member.external_attr = 0o644 << 16
                    bundle.writestr(member, draw(shape, COLOURS[colour], rng))
    return buffer.getvalue()


def main(mirror: str) -> None:
    data = archive_bytes()
    target = Path(mirror) / "example-shapes" / "shapes.zip"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    print(f"{target}: {len(data)} bytes, md5 {hashlib.md5(data).hexdigest()}, "
          f"sha256 {hashlib.sha256(data).hexdigest()}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
